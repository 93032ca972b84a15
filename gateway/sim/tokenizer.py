"""The simulator's tokenizer: deterministic, stateless and reversible.

Text is split into pieces the way GPT-style tokenizers do (a word keeps its leading
space, punctuation marks stand alone, runs of whitespace are pieces of their own), then:

* a piece found in the vocabulary is one token. The vocabulary (ids below `CHUNK_BASE`)
  holds the chat template's special markers, whitespace, ASCII punctuation and digits,
  every word of `WORDS` bare, with a leading space, and capitalised, and a guard model's
  verdicts `safe` and `unsafe`. The default generator
  only emits vocabulary pieces, and prose mode spells its text with `pieces`, so either
  way a completion of N tokens tokenizes back to N tokens.
* any other piece is spelt in UTF-8 byte chunks of up to three bytes, one token each
  (ids from `CHUNK_BASE`), as a byte-level BPE falls back to shorter merges.

Ids are therefore the same in every process, any id sequence decodes without state, and
prompt token counts are plausible (an unknown English word costs about two tokens).

Chat template (`render_chat`): each message becomes `<|role|>\\n{content}<|end|>\\n`, and
the generation prompt `<|assistant|>\\n` follows unless `add_generation_prompt` is false.
A chat request's prompt tokens are the tokens of that text, in /tokenize and in usage.
"""

from __future__ import annotations

import codecs
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_WORD_LIST = """
the of and a to in is that it was for on are as with his they at be this from have or
by one had not but what all were when we there can an your which their said if do will
each about how up out them then she many some so these would other into has more her
two like him see time could no make than first been its who now people my made over
did down only way find use may water long little very after words called just where
most know get through back much before go good new write our used me man too any day
same right look think also around another came come work three word must because does
part even place well such here take why things help put years different away again off
went old number great tell men say small every found still between name should home
big give air line set own under read last never us left end along while might next
sound below saw something thought both few those always looked show large often
together asked house world going want school important until form food keep children
feet land side without boy once animals life enough took sometimes four head above
kind began almost live page got earth need far hand high year mother light parts
country father let night following picture being study second eyes soon times story
boys since white days ever paper hard near sentence better best across during today
others however sure means knew try told young miles sun ways thing whole hear example
heard several change answer room sea against top turned learn point city play toward
five using himself usually river
"""
WORDS = tuple(_WORD_LIST.split())  # the model's words; each is one token

# A guard model's verdicts (guard.py), one token each as in Llama 3's vocabulary, so the
# first generated token is the verdict and its log-probabilities tell P(unsafe).
GUARD_WORDS = ("safe", "unsafe")

ROLES = ("system", "developer", "user", "assistant", "tool")
SPECIALS = (*(f"<|{role}|>" for role in ROLES), "<|end|>")

# Chunk ids: one byte at CHUNK_BASE + b, two at CHUNK_BASE + 256 + v, three after those.
CHUNK_BASE = 1 << 16
_CHUNK_OFFSET = (0, CHUNK_BASE, CHUNK_BASE + 256, CHUNK_BASE + 256 + (1 << 16))
VOCAB_SIZE = _CHUNK_OFFSET[3] + (1 << 24)

_PIECE = re.compile(r"<\|[a-z_]+\|>| ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\s+(?!\S)|\s+")


def _vocabulary() -> list[str]:
    pieces = [*SPECIALS, " ", "  ", "   ", "    ", "\n", "\n\n", "\t"]
    for symbol in string.punctuation + string.digits:
        pieces += [symbol, " " + symbol]
    for word in WORDS:
        pieces += [word, " " + word, word.capitalize(), " " + word.capitalize()]
    pieces += GUARD_WORDS  # last, so that the ids before them never change
    return list(dict.fromkeys(pieces))  # first occurrence keeps its id


class Tokenizer:
    """Encode and decode text; cheap to build, immutable once built."""

    def __init__(self) -> None:
        self._pieces = _vocabulary()
        self._ids = {piece: i for i, piece in enumerate(self._pieces)}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _PIECE.findall(text):
            known = self._ids.get(piece)
            if known is not None:
                ids.append(known)
                continue
            raw = piece.encode()
            for start in range(0, len(raw), 3):
                chunk = raw[start:start + 3]
                ids.append(_CHUNK_OFFSET[len(chunk)] + int.from_bytes(chunk, "big"))
        return ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def pieces(self, text: str) -> list[str]:
        """The text each token of `text` adds, as a streaming detokenizer shows it: one
        entry per token of `encode(text)`, joined they are `text`. A token that ends inside
        a multi-byte character adds "" and the token that completes it the character."""
        out: list[str] = []
        for piece in _PIECE.findall(text):
            if piece in self._ids:
                out.append(piece)
                continue
            decoder = codecs.getincrementaldecoder("utf-8")()
            raw = piece.encode()
            out.extend(decoder.decode(raw[start:start + 3]) for start in range(0, len(raw), 3))
        return out

    def piece_bytes(self, token: int) -> bytes:
        """The bytes one token stands for; ValueError for an id outside the vocabulary."""
        if 0 <= token < len(self._pieces):
            return self._pieces[token].encode()
        if not CHUNK_BASE <= token < VOCAB_SIZE:
            raise ValueError(f"token id {token} is out of vocabulary")
        size = 1 if token < _CHUNK_OFFSET[2] else 2 if token < _CHUNK_OFFSET[3] else 3
        return (token - _CHUNK_OFFSET[size]).to_bytes(size, "big")

    def decode(self, tokens: Iterable[int]) -> str:
        return b"".join(self.piece_bytes(t) for t in tokens).decode(errors="replace")


def content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def render_chat(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """The simulator's chat template (see the module docstring)."""
    parts = [f"<|{m.get('role')}|>\n{content_text(m.get('content'))}<|end|>\n"
             for m in messages]
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)
