"""The static fast path of the embedding classifier: MiniLM's own token table, no forward pass.

A sentence vector here is the L2-normalised mean of all-MiniLM-L6-v2's input token
embeddings (the model's `word_embeddings` table, 30522 x 384) over the text's word-piece
tokens. It costs a tokenizer call and a small gather (tens of microseconds, on the event
loop) where the contextual model costs 15-30 ms of CPU per short prompt on this class of
machine. A separate linear head is trained on these vectors (`head.py`, `fast`), and the
classifier runs the contextual model only when the fast head is unsure (`contextual_band`),
so most requests never wait for the transformer.

Thread-safety: this object has its own tokenizer instance and only reads its table, so the
event loop can call it while the worker thread runs the full model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.pipeline.classify.head import Floats

# Text the fast tokenizer path handles: ASCII with no control characters but tab and line
# breaks. There MiniLM's normaliser only lower-cases, and its pre-tokenizer splits on
# whitespace and makes every ASCII punctuation character a word of its own.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
_CACHED_WORDS = 1 << 16
_CACHED_WORD_CHARS = 100  # WordPiece makes a longer word [UNK]: not worth a cache entry


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

    def ids(self, text: str, max_tokens: int) -> list[int]:
        """Word-piece ids without [CLS]/[SEP]; long text keeps its head and its tail."""
        if text.isascii() and _CONTROL.search(text) is None:
            ids = self._ascii_ids(text)
        else:
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) > max_tokens:
            head = max_tokens // 2
            ids = ids[:head] + ids[len(ids) - (max_tokens - head):]
        return ids or [self._unknown]

    def _ascii_ids(self, text: str) -> list[int]:
        """The tokenizer's ids, a few times faster: split here, word-pieces cached per word
        (a test compares both on every shipped text and on random ASCII)."""
        ids: list[int] = []
        pieces = self._pieces
        for word in _WORDS.findall(text.lower()):
            found = pieces.get(word)
            if found is None:
                found = [token.id for token in self._tokenizer.model.tokenize(word)]
                if len(pieces) < _CACHED_WORDS and len(word) <= _CACHED_WORD_CHARS:
                    pieces[word] = found
            ids.extend(found)
        return ids

    def encode(self, texts: Sequence[str], max_tokens: int = 128) -> Floats:
        rows = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            # The sum has the mean's direction, and the row is normalised anyway.
            vector = np.add.reduce(self._table.take(self.ids(text, max_tokens), axis=0), axis=0)
            rows[i] = vector / max(math.sqrt(float(np.dot(vector, vector))), 1e-9)
        return rows
