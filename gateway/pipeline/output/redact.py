"""Redact filter: replaces configured literal strings in the output.

A term can be split across stream chunks, so the filter holds back any suffix that could
be the start of a term until the next delta (or finish) decides it; this makes it the
reference example of the feed/finish seam.
"""

from __future__ import annotations

import re

REPLACEMENT = "[redacted]"


class RedactFilter:
    __slots__ = ("_held", "_pattern", "_terms")
    hides_text = True  # the relay drops logprobs, which would carry the text it replaced

    def __init__(self, terms: tuple[str, ...]) -> None:
        self._terms = tuple(sorted({t for t in terms if t}, key=len, reverse=True))
        if not self._terms:
            raise ValueError("RedactFilter needs at least one non-empty term")
        self._pattern = re.compile("|".join(re.escape(t) for t in self._terms))
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._pattern.sub(REPLACEMENT, self._held + delta)
        cut = self._safe_cut(text)
        self._held = text[cut:]
        return text[:cut]

    def finish(self) -> str:
        tail, self._held = self._held, ""
        return tail

    def _safe_cut(self, text: str) -> int:
        """Length of the prefix that cannot be the start of a term split across chunks."""
        longest = len(self._terms[0])
        for i in range(max(0, len(text) - longest + 1), len(text)):
            suffix = text[i:]
            if any(term.startswith(suffix) for term in self._terms):
                return i
        return len(text)
