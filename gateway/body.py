"""Reading a request body with its bounds: size (client_max_size, 413), time (408), and
JSON nesting depth (400)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.context import SETTINGS
from gateway.errors import RequestTimeout
from gateway.settings import TimeoutSettings

_DEFAULT = TimeoutSettings()

# orjson parses up to 1024 levels but serialises only up to 255, and the gateway
# re-serialises what it forwards (upstream body, /tokenize): deeper input would fail
# there as a 500. Real bodies (tool schemas included) stay far below this.
MAX_DEPTH = 128


async def read_body(request: web.Request) -> bytes:
    """The whole body; RequestTimeout when it takes longer than timeouts.client_body_s
    (a slow-loris upload would otherwise hold a connection and a task indefinitely)."""
    settings = request.app.get(SETTINGS)  # sub-apps and tests may mount handlers bare
    timeouts = settings.timeouts if settings is not None else _DEFAULT
    try:
        async with asyncio.timeout(timeouts.client_body_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout("The request body did not arrive in time") from None


def too_deep(raw: bytes, parsed: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `parsed` (the JSON in `raw`) nests arrays and objects deeper than `limit`."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # cannot nest deeper than it has brackets: no walk for most bodies
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(parsed, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False
