"""Output filters: the response as a stream of text deltas.

Seam: `feed(delta) -> delta` returns the text to emit now (possibly holding some back),
`finish() -> tail` returns whatever was held back when the choice ends. The same filter
object serves streaming and non-streaming responses (non-streaming is one feed of the
whole text followed by finish), so both behave identically. One filter instance per
response choice; filters are never shared across requests.
"""

from __future__ import annotations

from typing import Any, Protocol


class OutputFilter(Protocol):
    def feed(self, delta: str) -> str: ...

    def finish(self) -> str: ...


# Set to "withheld" when the caller asked for logprobs and the output filters (moderation,
# redaction, the watermark payload) keep them back: a null is then a decision, not a bug.
LOGPROBS_HEADER = "x-gateway-logprobs"


def asks_logprobs(body: dict[str, Any]) -> bool:
    """Whether the request asks for logprobs (completions' `logprobs: 0` does: 0 == False,
    hence `is`)."""
    logprobs = body.get("logprobs")
    return (logprobs is not None and logprobs is not False) \
        or body.get("top_logprobs") is not None


class FilterChain:
    """Filters applied in order: each one's output is the next one's input."""

    __slots__ = ("filters", "hides_text")

    def __init__(self, filters: tuple[OutputFilter, ...]) -> None:
        self.filters = filters
        # A filter that withholds, replaces or marks text (moderation, redaction, the
        # watermark payload) sets `hides_text`: the choice's logprobs, which spell out every
        # generated token as generated, must not go out beside it.
        self.hides_text = any(getattr(f, "hides_text", False) for f in filters)

    def feed(self, delta: str) -> str:
        for f in self.filters:
            delta = f.feed(delta)
        return delta

    def finish(self) -> str:
        tail = ""
        for f in self.filters:
            tail = f.feed(tail) + f.finish()
        return tail

    def apply(self, text: str) -> str:
        """Whole-text form, for non-streaming responses."""
        return self.feed(text) + self.finish()
