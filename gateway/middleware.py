"""The gateway's middleware: request ids, drain, metrics, and the one error renderer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.accounting import log_request, record_admin, record_request
from gateway.audit import AUDIT_KEYS
from gateway.context import CONTEXT, LIFECYCLE, METRICS, POOL, PRINCIPAL, REQUEST_ID, TIER
from gateway.errors import (
    AuditUnavailable,
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    TokenRefused,
    Unavailable,
)
from gateway.tracing import TRACEPARENT, TRACING

log = logging.getLogger("gateway.http")
request_log = logging.getLogger("gateway.request")  # the one line per request

STARTED: web.RequestKey[float] = web.RequestKey("started")
# Why the token was refused (gateway_auth_failures_total's reason), for the log line.
AUTH_FAILURE: web.RequestKey[str] = web.RequestKey("auth_failure")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Still answered while draining: liveness and scrapes must keep working.
_ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_CLOSED = 499  # nginx's convention, for the metric only: nothing is sent
ADMIN_PREFIX = "/admin/"  # calls audited once their token is valid (accounting.py)


def error_response(error: GatewayError) -> web.Response:
    return web.Response(status=error.http_status, body=error.to_json(),
                        content_type="application/json", headers=error.headers)


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("Request body is too large")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        # RFC 9110: a 405 names the methods the resource does allow.
        return MethodNotAllowed(f"Method {exc.method} is not allowed here",
                                headers={"Allow": exc.headers.get("Allow", "")})
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("Unknown path")
    if 400 <= exc.status < 500:
        return BadRequest(exc.reason)
    return GatewayError("Internal error")


@web.middleware
async def render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The single place where failures become OpenAI-shaped error responses."""
    try:
        return await handler(request)
    except GatewayError as exc:
        _note_refusal(request, exc)
        return error_response(exc)
    except web.HTTPException as exc:
        return error_response(_from_http_exception(exc))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in request %s", request.get(REQUEST_ID, "-"))
        return error_response(GatewayError("Internal error"))


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, drain refusal, in-flight accounting, the audit record, and then (once
    the answer is sent) request metrics and the log line."""
    _set_request_id(request)
    app = request.app
    lifecycle, metrics = app[LIFECYCLE], app[METRICS]
    if lifecycle.draining and request.path not in _ALWAYS_OPEN:
        # Counted and logged: during a rollout these are the answers an SRE looks for.
        refused = error_response(Unavailable("The gateway is shutting down"))
        route = _route(request)
        _count(request, route, refused.status, 0.0)
        _log_unaudited(request, route, refused.status, 0.0)
        return refused
    started = time.perf_counter()
    request[STARTED] = started
    tracing, span = app[TRACING], None
    if tracing is not None and request.path not in _ALWAYS_OPEN:  # probes: no span each
        span = tracing.start(request.headers)
        request[TRACEPARENT] = tracing.traceparent(span)
    status = 500
    lifecycle.begin()
    metrics.in_flight.inc()
    try:
        response = await handler(request)
        ctx = request.get(CONTEXT)
        status = CLIENT_CLOSED if ctx is not None and ctx.client_gone else response.status
        # Before aiohttp sends the response: without its record (audit.on_error:
        # fail_closed) the answer is withheld, where it has not started (a stream's
        # relay ends it with the error event itself).
        recorded = ctx is None or await record_request(app, ctx, status)
        if not recorded and not response.prepared:
            response = error_response(AuditUnavailable())
            status = response.status
        if ctx is None and PRINCIPAL in request and request.path.startswith(ADMIN_PREFIX):
            await record_admin(app, request, _route(request), status)
        if not response.prepared:
            # Sent here, so that the client does not wait for the metrics and the log
            # line. A client gone by now had its whole answer written, as far as the
            # gateway can tell: counted as served, as when aiohttp sends it.
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                await response.write_eof()
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        status = CLIENT_CLOSED
        ctx = request.get(CONTEXT)
        if ctx is not None:
            await record_request(app, ctx, status)
        raise
    finally:
        lifecycle.end()
        metrics.in_flight.dec()
        ctx = request.get(CONTEXT)
        if ctx is not None and ctx.audited:
            log_request(ctx, ctx.status or status)
        route = _route(request)
        elapsed = time.perf_counter() - started
        _count(request, route, status, elapsed)
        if ctx is None and request.path not in _ALWAYS_OPEN:
            _log_unaudited(request, route, status, elapsed)
        if tracing is not None and span is not None:
            tracing.finish(span, request, route, status)


def _set_request_id(request: web.Request) -> None:
    incoming = request.headers.get("x-request-id", "")
    request[REQUEST_ID] = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(16)


def _note_refusal(request: web.Request, error: GatewayError) -> None:
    if isinstance(error, TokenRefused):
        request[AUTH_FAILURE] = error.reason


def _route(request: web.Request) -> str:
    """The route's pattern (bounded), "unmatched" for unknown paths."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _log_unaudited(request: web.Request, route: str, status: int, elapsed: float) -> None:
    """The one log line of a request with no RequestContext (admin calls, models, and
    refusals before the body was read): who asked, what, and how it ended."""
    if not request_log.isEnabledFor(logging.INFO):
        return
    principal, keys = request.get(PRINCIPAL), request.app.get(AUDIT_KEYS)
    fields = {
        "request_id": request.get(REQUEST_ID, "-"),
        "key_id": keys.key_id(principal.sub) if principal and keys else "-",
        "tier": request.get(TIER) or (principal.tier if principal else "-"),
        "method": request.method,
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
    }
    if AUTH_FAILURE in request:  # the label only: the token itself is never logged
        fields["auth_failure"] = request[AUTH_FAILURE]
    request_log.info("request", extra=fields)


def count_early_answer(request: web.Request, error: GatewayError) -> None:
    """Count and log an answer given before the middleware ran: the refusal of an
    `Expect: 100-continue` (a bad token, a declared size over the limit), which otherwise
    left a count and no log line."""
    _set_request_id(request)  # the response's x-request-id (add_headers) and the line's
    _note_refusal(request, error)
    status = error.http_status
    route = _route(request)
    _count(request, route, status, 0.0)
    _log_unaudited(request, route, status, 0.0)


def _count(request: web.Request, route: str, status: int, elapsed: float) -> None:
    metrics = request.app[METRICS]
    ctx = request.get(CONTEXT)
    model = tier = "-"
    decision = "none"
    if ctx is not None:
        model = ctx.model if request.app[POOL].knows(ctx.model) else "other"
        tier, decision = ctx.tier, ctx.decision
        # A stream that failed after its 200 counts with its error's status, as it is
        # audited and logged, so error ratios see it (the span keeps the status sent).
        if status != CLIENT_CLOSED:
            status = ctx.status or status
    else:
        tier = request.get(TIER, tier)
    metrics.requests.labels(route, model, tier, decision, str(status)).inc()
    metrics.request_duration.labels(route).observe(elapsed)
    if status == CLIENT_CLOSED:
        metrics.client_disconnects.labels(route).inc()


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers every response carries, streams included."""
    headers = response.headers
    # aiohttp answers some requests before the middleware gives them an id (an unknown
    # Expect): they still get one, as every response does.
    headers["x-request-id"] = request.get(REQUEST_ID) or secrets.token_hex(16)
    if "x-gateway-overhead-ms" not in headers and STARTED in request:
        # Answered by the gateway alone: all of its time is the gateway's own.
        elapsed = time.perf_counter() - request[STARTED]
        headers["x-gateway-overhead-ms"] = f"{elapsed * 1000:.2f}"
    headers["Server"] = "gateway"  # no framework or version banner
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Cache-Control", "no-store")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
