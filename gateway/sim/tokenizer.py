"""A deterministic word-level tokenizer standing in for a model's own.

A token is a word (or a punctuation mark) with its leading whitespace, so concatenating
token texts gives back the original text exactly. Ids are interned per process; counts are
what matter to the gateway, and they are the same for the same text everywhere.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]|\s+$")


class Tokenizer:
    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._texts: list[str] = []

    def split(self, text: str) -> list[str]:
        return _TOKEN.findall(text)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.split(text):
            if piece not in self._ids:
                self._ids[piece] = len(self._texts)
                self._texts.append(piece)
            ids.append(self._ids[piece])
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self._texts[i] for i in ids if 0 <= i < len(self._texts))


def render_chat(messages: list[dict[str, Any]]) -> str:
    """The simulator's chat template: what a chat request's prompt tokens are counted on."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"<|{message.get('role', 'user')}|>\n{content or ''}\n")
    return "".join(parts) + "<|assistant|>\n"
