"""Incremental Server-Sent Events parsing and framing, as OpenAI and vLLM use them."""

from __future__ import annotations

import orjson

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


class SSEParser:
    """Feed raw bytes as they arrive; get back each complete event's data payload.

    Never buffers more than one incomplete event. Comment lines and fields other than
    `data` are ignored; multi-line data is joined with a newline, as the SSE spec says.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            # CRLF framing; a trailing CR may be half of a CRLF split across reads.
            data = data.replace(b"\r\n", b"\n")
        *events, self._buffer = data.split(b"\n\n")
        payloads = []
        for event in events:
            payload = _event_data(event)
            if payload is not None:
                payloads.append(payload)
        return payloads

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buffer.strip())

    @property
    def pending_data(self) -> bool:
        """True when the unfinished event buffered has begun a data line: the bytes of a
        large event still arriving are progress, a keep-alive `: ping` is not."""
        buffer, start = self._buffer, 0
        if buffer.startswith(b"data"):  # the common case, without a scan of a long line
            return True
        while (end := buffer.find(b"\n", start)) >= 0:
            if buffer[start:min(end, start + 5)] in (b"data:", b"data"):
                return True
            start = end + 1
        return start < len(buffer) and b"data:".startswith(buffer[start:start + 5])


def _event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the common case: one data line
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n")
             if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def frame_json(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
