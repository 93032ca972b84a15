"""Reading a request body with both bounds: size (client_max_size, 413) and time (408)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.context import SETTINGS
from gateway.errors import RequestTimeout


async def read_body(request: web.Request) -> bytes:
    """The whole body; RequestTimeout when it takes longer than timeouts.client_body_s
    (a slow-loris upload would otherwise hold a connection and a task indefinitely)."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].timeouts.client_body_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout("The request body did not arrive in time") from None
