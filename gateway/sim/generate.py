"""What the simulated model says, and when it stops.

Text depends only on (prompt, seed, choice index): the same request gives the same words,
so tests can compare direct and proxied answers word for word. The model speaks in
sentences of 5..14 words from the tokenizer's vocabulary: every word is one token with
its leading space (" hello"), the first is capitalised, and a "." token ends the sentence.
With the `prose` directive it says long Markdown-ish answers instead (see prose.py). A
guard model says its verdict (`said`, see guard.py), then may end; made to go on
(`ignore_eos`, `min_tokens`), it goes on in sentences.

When it stops:
  natural end    after the first sentence that reaches a length drawn from 16..49 tokens
                 (never before `min_tokens`), the model emits an end-of-sequence token:
                 no text, but one generated token, as vLLM counts EOS. A natural answer
                 is 17..64 tokens; finish_reason "stop", stop_reason None. In prose
                 mode: after a whole answer (or the first after `min_tokens`). A guard
                 model: after its verdict (or the first sentence after `min_tokens`).
  max_tokens     cut after that many tokens: finish_reason "length". `ignore_eos` lets
                 the model talk until then.
  stop strings   the text ends just before the earliest stop string (just after it with
                 `include_stop_str_in_output`); the token that completed it is the last
                 generated. finish_reason "stop", stop_reason the string.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from gateway.sim.prose import Prose
from gateway.sim.tokenizer import WORDS

EOS = ""  # the end-of-sequence token's text


@dataclass(frozen=True, slots=True)
class Limits:
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    include_stop: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """One choice's answer: the text of each generated token, and why it ended."""

    pieces: tuple[str, ...]  # "" for EOS, and for text hidden by a stop string
    finish_reason: str  # "stop" | "length"
    stop_reason: str | None = None
    raw: tuple[str, ...] = ()  # each token's own text, as logprobs name it: "" for EOS;
    # the same as `pieces` unless a stop string hid some (then set by `plan`)

    @property
    def token_texts(self) -> tuple[str, ...]:
        return self.raw or self.pieces

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        return len(self.pieces)


def plan(prompt: str, seed: int, index: int, limits: Limits, prose: Prose | None = None,
         said: Sequence[str] = ()) -> Plan:
    """The answer: the model's sentences, or with `prose` (the `prose` sim directive)
    Markdown-ish prose, which ends after a whole answer instead of after a sentence, or
    with `said` (a guard model's verdict, one entry per token) those tokens, then the end."""
    digest = hashlib.blake2b(f"{seed}\0{index}\0{prompt}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    source: Iterable[str | None]
    if said:
        source = itertools.chain(said, (None,), _sentences(rng, 0))
    elif prose is None:
        source = _sentences(rng, max(rng.randint(16, 49), limits.min_tokens))
    else:
        source = prose.pieces(rng)
    finder = _StopFinder(limits.stop, limits.include_stop) if limits.stop else None
    pieces: list[str] = []
    for piece in source:
        if len(pieces) >= limits.max_tokens:
            return Plan(tuple(pieces), "length")
        if piece is None:  # the model may end here
            if not limits.ignore_eos and len(pieces) >= limits.min_tokens:
                pieces.append(EOS)
                return Plan(tuple(pieces), "stop")
            continue
        pieces.append(piece)
        hit = finder.feed(piece) if finder is not None else None
        if hit is not None:
            cut, stop = hit
            return Plan(_clip(pieces, cut), "stop", stop, tuple(pieces))
    raise AssertionError("unreachable: the sources never end")


def _sentences(rng: random.Random, natural: int) -> Iterator[str | None]:
    """Sentences without end; None after each one that reaches `natural` tokens in all."""
    said = 0
    while True:
        length = rng.randint(5, 14)
        yield " " + rng.choice(WORDS).capitalize()
        for _ in range(length - 1):
            yield " " + rng.choice(WORDS)
        yield "."
        said += length + 1
        if said >= natural:
            yield None


class _StopFinder:
    """Finds the earliest stop string in text fed piece by piece, looking only at the tail."""

    def __init__(self, stops: tuple[str, ...], include: bool) -> None:
        self._stops = stops
        self._include = include
        self._keep = max(len(s) for s in stops) - 1
        self._tail = ""
        self._end = 0  # length of all text fed so far

    def feed(self, piece: str) -> tuple[int, str] | None:
        """(where the text is cut, the stop string) once a stop string is complete."""
        window = self._tail + piece
        start = self._end - len(self._tail)
        # Earlier windows held no stop string, so any match here ends inside `piece`.
        found = [(i, s) for s in self._stops if (i := window.find(s)) >= 0]
        self._end += len(piece)
        self._tail = window[-self._keep:] if self._keep else ""
        if not found:
            return None
        i, stop = min(found, key=lambda hit: hit[0])
        return start + i + (len(stop) if self._include else 0), stop


def _clip(pieces: list[str], cut: int) -> tuple[str, ...]:
    out: list[str] = []
    start = 0
    for piece in pieces:
        out.append(piece[:max(0, cut - start)])
        start += len(piece)
    return tuple(out)
