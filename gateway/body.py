"""Reading a request body with its bounds: size (client_max_size, 413), time (408), and
JSON nesting depth (400)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.context import SETTINGS
from gateway.errors import RequestTimeout
from gateway.settings import TimeoutSettings

_DEFAULT = TimeoutSettings()

# orjson parses 1024 levels of arrays and objects but writes only 254, and the gateway
# writes back what it forwards (the upstream body, /tokenize): deeper input was a 500.
MAX_DEPTH = 254


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


def too_deep(raw: bytes, parsed: Any) -> bool:
    """Whether `parsed` (the JSON in `raw`) nests deeper than the gateway can write back."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False  # cannot nest deeper than it has brackets: nothing more for most bodies
    try:
        orjson.dumps(parsed)  # C speed, and exactly the limit that matters
    except orjson.JSONEncodeError:
        return True
    return False
