"""Incremental Server-Sent Events parsing and framing, as OpenAI and vLLM use them."""

from __future__ import annotations

import orjson

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


# The default bound on one event: vLLM's are a few kilobytes at most.
MAX_EVENT_BYTES = 128 * 1024 * 1024


class EventTooLarge(ValueError):
    """An unfinished event grew past the parser's bound."""


class SSEParser:
    """Feed raw bytes as they arrive; get back each complete event's data payload.

    Never buffers more than one incomplete event, and never more than `max_event_bytes`
    of it (EventTooLarge): a backend that never ends an event cannot fill memory. The
    pieces of a large event are joined once, when one may end it, not on every read.
    Comment lines and fields other than `data` are ignored; multi-line data is joined
    with a newline, as the SSE spec says.
    """

    __slots__ = ("_buffer", "_max", "_parts", "_size")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._parts: list[bytes] = []  # reads with no line end, after _buffer
        self._size = 0
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk and (self._buffer or self._parts):
            # No event can end in a read without a line end: keep it, do not re-scan.
            self._parts.append(chunk)
            self._size += len(chunk)
            self._check()
            return []
        if self._parts:
            chunk = b"".join(self._parts) + chunk
            self._parts.clear()
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            # CRLF framing; a trailing CR may be half of a CRLF split across reads.
            data = data.replace(b"\r\n", b"\n")
        *events, self._buffer = data.split(b"\n\n")
        self._size = len(self._buffer)
        self._check()
        payloads = []
        for event in events:
            payload = _event_data(event)
            if payload is not None:
                payloads.append(payload)
        return payloads

    def _check(self) -> None:
        if self._size > self._max:
            raise EventTooLarge(f"an event longer than {self._max} bytes")

    def _pending_bytes(self) -> bytes:
        if self._parts:
            self._buffer += b"".join(self._parts)
            self._parts.clear()
        return self._buffer

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._pending_bytes().strip())

    @property
    def pending_data(self) -> bool:
        """True when the unfinished event buffered has begun a data line: the bytes of a
        large event still arriving are progress, a keep-alive `: ping` is not."""
        buffer, start = self._buffer, 0  # the pieces after it hold no line end
        if buffer.startswith(b"data"):  # the common case, without a scan of a long line
            return True
        while (end := buffer.find(b"\n", start)) >= 0:
            if buffer[start:min(end, start + 5)] in (b"data:", b"data"):
                return True
            start = end + 1
        last = buffer[start:start + 5]
        for part in self._parts:  # the last line goes on in them
            if len(last) >= 5:
                break
            last += part[:5 - len(last)]
        return bool(last) and b"data:".startswith(last[:5])


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
