"""The static fast path of the embedding classifier: MiniLM's own token table, no forward pass.

A sentence vector here is the L2-normalised mean of all-MiniLM-L6-v2's input token
embeddings (the model's `word_embeddings` table, 30522 x 384) over the text's word-piece
tokens. It costs a tokenizer call and a small gather (tens of microseconds, on the event
loop) where the contextual model costs 15-30 ms of CPU per short prompt on this class of
machine. A separate linear head is trained on these vectors (`head.py`, `fast`), and the
classifier runs the contextual model only when the fast head is unsure (`contextual_band`),
so most requests never wait for the transformer.

Long text is read in windows (`windows`): overlapping spans of at most `size` tokens that
start, where one is near, at a paragraph or a sentence, each with its static vector, so
the classifier can screen every part of a long prompt and send the model only the parts
worth its time. A text that fits in one window is that window, unchanged.

Thread-safety: this object has its own tokenizer instance and only reads its table, so the
event loop can call it while the worker thread runs the full model.

The GIL: the event loop runs this, so nothing here lets go of the GIL. numpy does in
`take`, fancy indexing, reductions and `np.dot` over more than a few hundred numbers (and
`@` of two matrices); each time, a thread waiting for it (the audit and ledger writers,
the model's worker) takes it in the middle of the request. Rows are therefore gathered by
slicing and summed by a product with ones, which keep it (three let-goes a prompt before,
25 for a long one cut into windows; a test checks there are none).
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.pipeline.classify.head import Floats

# Text the fast tokenizer path handles: ASCII with no control characters but tab and line
# breaks. There MiniLM's normaliser only lower-cases, and its pre-tokenizer splits on
# whitespace and makes every ASCII punctuation character a word of its own.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
_WORDS_SPACED = re.compile(r"([a-z0-9]+|[^a-z0-9\s])(\s*)")
_CACHED_WORDS = 1 << 16
_CACHED_WORD_CHARS = 100  # WordPiece makes a longer word [UNK]: not worth a cache entry
# Where a window may start, best first: after a blank line (a new message or paragraph),
# then after a line break or a sentence's end. Matches end at the next word.
# Text of at most this many characters per token of a window is tokenized on the fast
# path first: most such text (English has 4 to 5 characters a token) is one window.
_SHORT_CHARS_PER_TOKEN = 4
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n\s*")
_SENTENCE = re.compile(r"(?:[.!?][\"')\]]*[^\S\n]+|\n)\s*")


@dataclass(frozen=True, slots=True)
class Windows:
    """One text cut for reading: `texts[i]` is a span of the text, `rows[i]` its static
    vector (unit rows); `whole`: the text fitted in one window, `texts == [text]`."""

    texts: list[str]
    rows: Floats
    whole: bool


class StaticEncoder:
    """Mean-of-token-embeddings sentence vectors, (n, dim) float32 unit rows."""

    def __init__(self, tokenizer_file: Path, table: Floats, tokenizers: Any) -> None:
        self._tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._table = np.ascontiguousarray(table, dtype=np.float32)
        self._unknown = int(self._tokenizer.token_to_id("[UNK]") or 0)
        self._pieces: dict[str, list[int]] = {}  # word -> its word-piece ids
        self.dim = int(self._table.shape[1])

    def is_word(self, word: str) -> bool:
        """Whether `word` (lower case) is one token of the model's vocabulary."""
        return self._tokenizer.token_to_id(word) is not None

    def ids(self, text: str, max_tokens: int) -> list[int]:
        """Word-piece ids without [CLS]/[SEP]; long text keeps its head and its tail."""
        return self._clip(self._all_ids(text), max_tokens)

    def _clip(self, ids: list[int], max_tokens: int) -> list[int]:
        if len(ids) > max_tokens:
            head = max_tokens // 2
            ids = ids[:head] + ids[len(ids) - (max_tokens - head):]
        return ids or [self._unknown]

    def _all_ids(self, text: str) -> list[int]:
        if text.isascii() and _CONTROL.search(text) is None:
            return self._ascii_ids(text)
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def _ascii_ids(self, text: str) -> list[int]:
        """The tokenizer's ids, a few times faster: split here, word-pieces cached per word
        (a test compares both on every shipped text and on random ASCII)."""
        ids: list[int] = []
        pieces = self._pieces
        for word in _WORDS.findall(text.lower()):
            found = pieces.get(word)
            if found is None:
                found = self._word_ids(word)
            ids.extend(found)
        return ids

    def _word_ids(self, word: str) -> list[int]:
        found = [token.id for token in self._tokenizer.model.tokenize(word)]
        if len(self._pieces) < _CACHED_WORDS and len(word) <= _CACHED_WORD_CHARS:
            self._pieces[word] = found
        return found

    def encode(self, texts: Sequence[str], max_tokens: int = 128,
               counts: list[int] | None = None) -> Floats:
        """Unit rows; `counts`, when given, gets each text's token count (before the cut
        to `max_tokens`), which says whether it needs windows."""
        rows = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            ids = self._all_ids(text)
            if counts is not None:
                counts.append(len(ids))
            rows[i] = self._vector(self._clip(ids, max_tokens))
        return rows

    def _vector(self, ids: list[int]) -> Floats:
        # The sum has the mean's direction, and the row is normalised anyway.
        return _unit(self._sum(ids))

    def _sum(self, ids: list[int]) -> Floats:
        """The sum of the table's rows `ids`, keeping the GIL (see the module's docstring)."""
        table = self._table
        rows = np.concatenate([table[i:i + 1] for i in ids])
        total: Floats = np.ones(len(ids), dtype=np.float32) @ rows
        return total

    def windows(self, text: str, size: int, limit: int | None = None) -> Windows:
        """`text` as windows of at most `size` word pieces, each starting at most size/2
        tokens after the one before (so any passage up to about half a window is read
        whole by one of them) and at least size/4 after it; a window starts at a
        paragraph where one lies in that range, else at a sentence or a line, else at a
        word. The last window ends with the text and is full. A text of at most `limit`
        tokens (default `size`) is one window, itself, with the vector `encode` gives it."""
        limit = size if limit is None else limit
        if len(text) <= _SHORT_CHARS_PER_TOKEN * limit:  # the usual prompt: no offsets
            ids = self._all_ids(text)
            if len(ids) <= limit:
                return Windows([text], self._vector(ids or [self._unknown])[None, :], True)
        starts, ends, firsts, ids = self._words(text)
        if len(ids) <= limit:
            return Windows([text], self._vector(ids or [self._unknown])[None, :], True)
        cuts = _cuts(text, starts, firsts, size)
        # Each stretch of tokens between two cut points is gathered and summed once; a
        # window's vector is the sum of its stretches. Row by row: see the GIL above.
        points = sorted({firsts[i] for cut in cuts for i in cut})
        sums = np.empty((len(points) - 1, self.dim), dtype=np.float32)
        for k in range(len(points) - 1):
            sums[k] = self._sum(ids[points[k]:points[k + 1]])
        where = {point: k for k, point in enumerate(points)}
        rows = np.empty((len(cuts), self.dim), dtype=np.float32)
        for w, (a, b) in enumerate(cuts):
            first, past = where[firsts[a]], where[firsts[b]]
            rows[w] = _unit(np.ones(past - first, dtype=np.float32) @ sums[first:past])
        return Windows([text[starts[a]:ends[b - 1]] for a, b in cuts], rows, False)

    def _words(self, text: str) -> tuple[list[int], list[int], list[int], list[int]]:
        """The text's words (a run of letters and digits, or one punctuation character: the
        tokenizer never joins across their edges): their character starts and ends, the
        index of each one's first token (and the count of tokens last), and the ids."""
        if not text.isascii() or _CONTROL.search(text) is not None:
            return self._tokenizer_words(text)
        lower = text.lower()
        # Words with the whitespace after each: positions are running sums of lengths.
        pairs = _WORDS_SPACED.findall(lower)
        words = [word for word, _ in pairs]
        lengths = list(map(len, words))
        starts = list(itertools.accumulate(
            map(len, (word + space for word, space in pairs)),
            initial=len(lower) - len(lower.lstrip())))
        pieces = self._pieces
        found = list(map(pieces.get, words))
        for i, hit in enumerate(found):
            if hit is None:
                found[i] = self._word_ids(words[i])
        tokens: list[list[int]] = found  # type: ignore[assignment]  # no None left
        firsts = list(itertools.accumulate(map(len, tokens), initial=0))
        ids = list(itertools.chain.from_iterable(tokens))
        return starts[:-1], list(map(operator.add, starts, lengths)), firsts, ids

    def _tokenizer_words(self, text: str) -> tuple[list[int], list[int], list[int], list[int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        starts: list[int] = []
        ends: list[int] = []
        firsts: list[int] = []
        last = None
        for i, (word, (start, end)) in enumerate(
                zip(encoding.word_ids, encoding.offsets, strict=True)):
            if word != last or word is None:
                starts.append(start)
                ends.append(end)
                firsts.append(i)
                last = word
            else:
                ends[-1] = end
        ids: list[int] = encoding.ids
        firsts.append(len(ids))
        return starts, ends, firsts, ids


def _unit(vector: Floats) -> Floats:
    unit: Floats = vector / max(math.sqrt(float(vector @ vector)), 1e-9)
    return unit


def _cuts(text: str, starts: list[int], firsts: list[int], size: int,
          ) -> list[tuple[int, int]]:
    """Windows as (first word, word past the last); see `StaticEncoder.windows`."""
    count = len(starts)
    total = firsts[count]
    # Word indexes where a paragraph, or a sentence or line, begins: ranked starts.
    ranked = [sorted({bisect.bisect_left(starts, m.end()) for m in pattern.finditer(text)})
              for pattern in (_PARAGRAPH, _SENTENCE)]

    def best(low: int, high: int, latest: bool = True) -> int:
        """The start in words low..high (low <= high) of the best rank, the latest (or
        the earliest) of them."""
        for found in ranked:
            k = bisect.bisect_right(found, high) - 1 if latest else bisect.bisect_left(found, low)
            if 0 <= k < len(found) and low <= found[k] <= high:
                return found[k]
        return high if latest else low

    cuts: list[tuple[int, int]] = []
    first = 0
    while True:
        end = max(bisect.bisect_right(firsts, firsts[first] + size) - 1, first + 1)
        if end >= count:
            # The last window: moved back to end with the text and be full.
            earliest = bisect.bisect_left(firsts, total - size)
            if earliest < first:
                first = best(earliest, first, latest=False)
            cuts.append((first, count))
            return cuts
        cuts.append((first, end))
        low = bisect.bisect_right(firsts, firsts[first] + size // 4)
        high = bisect.bisect_right(firsts, firsts[first] + size // 2) - 1
        first = best(low, high) if low <= high else max(high, first + 1)
