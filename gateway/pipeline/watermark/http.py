"""POST /admin/v1/watermark/detect: the detector over HTTP.

Body {"text": "...", "limit": 5}; answers `detect`'s JSON report. It does not
authenticate: mount it behind the admin-scope check like the other /admin/v1 routes.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from gateway.body import read_json
from gateway.errors import BadRequest
from gateway.pipeline.watermark.detect import detect
from gateway.pipeline.watermark.runtime import WATERMARK

MAX_TEXT = 1_000_000  # characters
MAX_LIMIT = 50


async def detect_handler(request: web.Request) -> web.Response:
    body = await read_json(request)
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise BadRequest("'text' must be a non-empty string", param="text",
                         code="invalid_value")
    if len(text) > MAX_TEXT:
        raise BadRequest(f"'text' is longer than {MAX_TEXT} characters", param="text",
                         code="invalid_value")
    limit = body.get("limit", 5)
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}", param="limit",
                         code="invalid_value")
    runtime = request.app[WATERMARK]
    # Fingerprinting and SQLite block: keep them off the event loop.
    report = await asyncio.to_thread(detect, text, runtime.secret, runtime.ledger, limit)
    if runtime.metrics is not None:
        runtime.metrics.watermark_detections.labels(report["result"]).inc()
    return web.Response(body=orjson.dumps(report), content_type="application/json")
