"""/admin/v1: admin-scope tokens only. Policy status and reload."""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from gateway.context import PIPELINE, RELOADER
from gateway.errors import Forbidden, PolicyInvalid
from gateway.pipeline.watermark.http import detect_handler
from gateway.protocol import expect_handler
from gateway.routes import authenticate

ADMIN_SCOPE = "admin"


async def require_admin(request: web.Request) -> None:
    """401 without a valid token, 403 with a token that lacks the admin scope."""
    principal = await authenticate(request)
    if ADMIN_SCOPE not in principal.scopes:
        raise Forbidden("this endpoint needs a token with the admin scope", code="admin_only")


async def policy_status(request: web.Request) -> web.Response:
    await require_admin(request)
    reloader = request.app[RELOADER]
    pipeline = request.app[PIPELINE].current
    body = {"active": reloader.status.as_json(), "directory": str(reloader.directory),
            "tiers": sorted(pipeline.policy.tiers) if pipeline.policy else []}
    return web.json_response(body)


async def policy_reload(request: web.Request) -> web.Response:
    await require_admin(request)
    reloader = request.app[RELOADER]
    ok = await reloader.reload_async("admin request")
    body: dict[str, Any] = {"reloaded": ok, "active": reloader.status.as_json()}
    if not ok:  # an error like every other, and the state the caller needs beside it
        error = PolicyInvalid(reloader.status.last_error or "the policy did not load")
        body = {**error.body(), **body}
    return web.json_response(body, status=200 if ok else 422)


async def watermark_detect(request: web.Request) -> web.StreamResponse:
    await require_admin(request)
    return await detect_handler(request)


def add_admin_routes(app: web.Application) -> None:
    post = functools.partial(app.router.add_post, expect_handler=expect_handler)
    post("/admin/v1/watermark/detect", watermark_detect)
    app.router.add_get("/admin/v1/policy", policy_status, expect_handler=expect_handler)
    post("/admin/v1/policy/reload", policy_reload)
