"""Reading a backend's body into memory, never more than a bound: a broken or hostile
backend must not fill the gateway's memory with one answer."""

from __future__ import annotations

import aiohttp

from gateway.pipeline.upstream.http import UpstreamResponse

# Error bodies, model lists, token counts, guard verdicts: kilobytes when sane.
SMALL_BODY_BYTES = 4 * 1024 * 1024


class BodyTooLarge(Exception):
    """The body is longer than the bound (the rest is left unread)."""


async def read_bounded(resp: aiohttp.ClientResponse | UpstreamResponse, max_bytes: int) -> bytes:
    """The whole body, or BodyTooLarge past `max_bytes`; releasing the response then
    closes its connection unread."""
    if resp.content_length is not None:  # the usual case: one read
        if resp.content_length > max_bytes:
            raise BodyTooLarge
        return await resp.read()
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLarge
    return bytes(body)
