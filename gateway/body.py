"""Reading a request body with its bounds: content type (415), size (client_max_size, 413),
time (408), encoding (400: a Content-Encoding its bytes do not match), and JSON nesting
depth (400)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.context import SETTINGS
from gateway.errors import (
    BadRequest,
    InvalidJSON,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from gateway.settings import TimeoutSettings

_DEFAULT = TimeoutSettings()

# orjson parses 1024 levels of arrays and objects but writes only 254, and the gateway
# writes back what it forwards (the upstream body, /tokenize): deeper input was a 500.
MAX_DEPTH = 254
_JSON_TYPES = ("application/json", "")


async def read_body(request: web.Request) -> bytes:
    """The whole body; RequestTimeout when it takes longer than timeouts.client_body_s
    (a slow-loris upload would otherwise hold a connection and a task indefinitely)."""
    settings = request.app.get(SETTINGS)  # sub-apps and tests may mount handlers bare
    timeouts = settings.timeouts if settings is not None else _DEFAULT
    if settings is not None and request.content_length is not None and \
            request.content_length > settings.max_body_bytes:
        # Refused from its declared size, not after waiting for bytes that may never come.
        raise PayloadTooLarge("Request body is too large")
    try:
        if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
            return await request.read()
        async with asyncio.timeout(timeouts.client_body_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout("The request body did not arrive in time") from None
    except RequestPayloadError:  # e.g. Content-Encoding: gzip on bytes that are not gzip
        raise BadRequest("The request body could not be decoded: check its Content-Encoding",
                         code="invalid_body") from None


def too_deep(raw: bytes, parsed: Any) -> bool:
    """Whether `parsed` (the JSON in `raw`) nests deeper than the gateway can write back."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False  # cannot nest deeper than it has brackets: nothing more for most bodies
    try:
        orjson.dumps(parsed)  # C speed, and exactly the limit that matters
    except orjson.JSONEncodeError:
        return True
    return False


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or the client error that says why it is not one."""
    ctype = request.content_type if "Content-Type" in request.headers else ""
    if ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json")
    raw = await read_body(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):  # orjson reads at most 1,024 levels
            raise InvalidJSON(f"The request body nests deeper than {MAX_DEPTH} levels") \
                from None
        raise InvalidJSON("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object", code="invalid_json")
    if too_deep(raw, body):
        raise InvalidJSON(f"The request body nests deeper than {MAX_DEPTH} levels")
    return body
