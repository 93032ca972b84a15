"""Thin HTTP handlers: parse, run the pipeline, hand over to the upstream relay."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import orjson
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.accounting import record_request
from gateway.body import read_json
from gateway.context import (
    CLASSIFY,
    CONTEXT,
    LIFECYCLE,
    LIMITER,
    METRICS,
    PIPELINE,
    POOL,
    PRINCIPAL,
    REQUEST_ID,
    SETTINGS,
    TIER,
    UPSTREAM,
    Principal,
    RequestContext,
    Route,
    Usage,
)
from gateway.errors import (
    Forbidden,
    GatewayError,
    ModelNotFound,
    PayloadTooLarge,
    Unavailable,
    shown,
)
from gateway.middleware import count_early_answer, error_response
from gateway.openapi import document
from gateway.pipeline import Decision, Pipeline
from gateway.pipeline.classify.runtime import note_output
from gateway.pipeline.upstream.relay import StreamRelay, relay_json
from gateway.pipeline.watermark.filters import provenance_header, vllm_xargs
from gateway.pipeline.watermark.provenance import HEADER as PROVENANCE
from gateway.pipeline.watermark.runtime import WATERMARK
from gateway.protocol import expect_handler
from gateway.tracing import TRACEPARENT

# Tokens in URLs end up in access logs and browser history: refused, never read.
_QUERY_TOKEN_NAMES = ("access_token", "token", "api_key", "key")


async def authenticate(request: web.Request) -> Principal:
    auth = request.app[PIPELINE].current.auth
    principal = await auth.authenticate(
        request.headers.getall("Authorization", []),
        any(name in request.query for name in _QUERY_TOKEN_NAMES))
    request[PRINCIPAL] = principal
    return principal


async def _proxy(request: web.Request, route: Route) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    pipeline = app[PIPELINE].current  # one policy version for the whole request
    principal = await authenticate(request)
    body = await read_json(request)  # 415, 413, 408, 400 as the body deserves
    ctx = RequestContext(request_id=request[REQUEST_ID], route=route, body=body, model="",
                         principal=principal, traceparent=request.get(TRACEPARENT))
    # The caller's tier, where configured (bounded labels): also on refusals that come
    # before the tier stage (a bad field), so audit filters and dashboards see them.
    if pipeline.policy is not None and principal.tier in pipeline.policy.tiers:
        ctx.tier = principal.tier
    request[CONTEXT] = ctx
    try:
        try:
            decision = await pipeline.check(ctx)
            _apply(ctx, decision)
        except BaseException:
            # Refused (or failed) after the rate limiter may have admitted it: the request
            # counts, its tokens and its concurrency slot come back.
            ctx.usage = Usage(reported=True)
            _finish(request, ctx)
            raise
        ctx.overhead_s += time.perf_counter() - started
        ctx.response_headers["x-gateway-overhead-ms"] = f"{ctx.overhead_s * 1000:.2f}"
        app[METRICS].overhead.labels(route).observe(ctx.overhead_s)
        try:
            if ctx.pending is None:
                return await _forward(request, ctx, pipeline)
            return await _overlapped(request, ctx, pipeline, ctx.pending)
        finally:
            _finish(request, ctx)
    finally:
        if ctx.pending is not None:
            _discard(ctx.pending)


def _apply(ctx: RequestContext, decision: Decision) -> None:
    """Raise the refusal, or note the decision (a flag is told in a header).

    With `overlap`, output moderation may have judged the answer before the verdict came:
    what it found outranks an `allow` (a block anything but a refusal)."""
    ctx.decision = decision.label
    if decision.error is not None:
        raise decision.error
    if ctx.output_action != "none":  # rank it against this verdict, as moderation does
        note_output(ctx, ctx.output_action, ())
    if decision.label == "flag":
        ctx.response_headers["x-gateway-decision"] = "flag"


async def _overlapped(request: web.Request, ctx: RequestContext, pipeline: Pipeline,
                      pending: asyncio.Task[Decision]) -> web.StreamResponse:
    """The expensive classifiers are still deciding (`overlap`): the request goes upstream
    meanwhile, and the relay holds the answer, headers included, at `ctx.gate` until the
    verdict. A refusal cancels the upstream request (vLLM aborts the generation); the
    client sees exactly what it would have seen without the overlap."""
    ctx.gate = asyncio.get_running_loop().create_future()
    forward = asyncio.ensure_future(_forward(request, ctx, pipeline))
    try:
        await asyncio.wait((forward, pending), return_when=asyncio.FIRST_COMPLETED)
        if ctx.answer_ready is not None:  # an upstream that failed first waits no longer
            ctx.answer_ready.set()
        decision = await pending
    except BaseException:
        forward.cancel()
        raise
    if decision.error is not None:
        forward.cancel()
        await asyncio.wait((forward,))
        _discard(forward)  # the refusal is the answer, whatever the upstream did
        ctx.usage = Usage(reported=True)  # as a refusal before forwarding: nothing used
    _apply(ctx, decision)
    ctx.gate.set_result(None)
    return await forward


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel a task no longer wanted; a finished one's exception counts as retrieved."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


async def _forward(request: web.Request, ctx: RequestContext,
                   pipeline: Pipeline) -> web.StreamResponse:
    app, settings = request.app, request.app[SETTINGS]
    watermark = app[WATERMARK]
    if settings.watermark.forward_key_id:
        ctx.body["vllm_xargs"] = vllm_xargs(ctx, watermark)

    def provenance(texts: list[str] | None) -> dict[str, str]:
        value = provenance_header(ctx, watermark, texts)
        return {PROVENANCE: value} if value is not None else {}

    if ctx.stream:
        ctx.response_headers.update(provenance(None))
        relay = StreamRelay(request, ctx, pipeline.output_chain, app[METRICS],
                            settings.timeouts.ttfb_s, settings.timeouts.idle_s,
                            on_end=functools.partial(record_request, app),
                            side_chains=pipeline.side_chain, lifecycle=app[LIFECYCLE],
                            max_event_bytes=settings.max_answer_bytes)
        return await app[UPSTREAM].forward(ctx, relay.run)

    async def respond(resp: Any) -> web.StreamResponse:
        return await relay_json(ctx, resp, pipeline.output_chain, settings.timeouts.idle_s,
                                provenance, side_chains=pipeline.side_chain,
                                max_bytes=settings.max_answer_bytes)

    # An answer still awaited when the drain time runs out is a 503 the client can read
    # (streams end with an error event instead: the relay registers itself).
    task = asyncio.current_task()
    cut = False

    def stop() -> None:
        nonlocal cut
        cut = True
        if task is not None:
            task.cancel()

    try:
        with app[LIFECYCLE].cuttable(stop):
            return await app[UPSTREAM].forward(ctx, respond)
    except asyncio.CancelledError:
        if cut and task is not None and task.uncancel() == 0:
            raise Unavailable("The gateway is shutting down; retry the request") from None
        raise


def _finish(request: web.Request, ctx: RequestContext) -> None:
    """Runs however the response ended (even when the client went away): settle, count."""
    if ctx.settle is not None:
        ctx.settle()
    metrics = request.app[METRICS]
    if ctx.gate is not None and ctx.gate.done() and not ctx.gate.cancelled():
        metrics.classifier_hold.observe(ctx.held_s)
    prompt = ctx.prompt_tokens_used
    if prompt or ctx.usage.completion_tokens:
        metrics.tokens.labels(ctx.tier, "prompt").inc(prompt)
        metrics.tokens.labels(ctx.tier, "completion").inc(ctx.usage.completion_tokens)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "embeddings")


async def _visible_models(request: web.Request) -> dict[str, dict[str, Any]]:
    """The upstream models the caller's tier may use, by id."""
    principal = await authenticate(request)
    policy = request.app[PIPELINE].current.policy
    tier = policy.tiers.get(principal.tier) if policy is not None else None
    if tier is None:
        raise Forbidden("your tier is not configured on this gateway", code="unknown_tier")
    request[TIER] = tier.name  # a configured tier: a bounded metric label
    return {model_id: m for model_id, m in request.app[POOL].models().items()
            if tier.allows_model(model_id)}


async def models(request: web.Request) -> web.Response:
    """Only the models the caller's tier may use."""
    listing = sorted((await _visible_models(request)).values(), key=lambda m: str(m["id"]))
    return web.json_response({"object": "list", "data": listing}, dumps=_dumps)


async def model(request: web.Request) -> web.Response:
    """One of them (the SDK's models.retrieve); a model the tier may not use is as unknown
    as one nobody serves, so the answer does not reveal what other tiers get."""
    name = request.match_info["model"]
    found = (await _visible_models(request)).get(name)
    if found is None:
        raise ModelNotFound(f"The model '{shown(name)}' does not exist", param="model")
    return web.json_response(found, dumps=_dumps)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = {  # each true when it passes
        "accepting": not request.app[LIFECYCLE].draining,
        "policy": request.app[PIPELINE].current.policy is not None,
        "upstream": request.app[POOL].ready,
        "classifier": request.app[CLASSIFY].ready,
    }
    required = request.app[SETTINGS].readiness_requires_upstream
    ready = all(passed for name, passed in checks.items() if required or name != "upstream")
    limiter = request.app[LIMITER]
    detail = {"ratelimit_mode": getattr(limiter, "mode", "memory")}
    return web.json_response({"ready": ready, "checks": checks, "detail": detail},
                             status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    text = generate_latest(request.app[METRICS].registry)
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(), dumps=_dumps)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` on the API: the token and the declared size are checked
    before the client is asked for its body, so a refused client does not upload it."""
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        try:
            await authenticate(request)
            limit = request.app[SETTINGS].max_body_bytes
            if request.content_length is not None and request.content_length > limit:
                raise PayloadTooLarge("Request body is too large")
        except GatewayError as error:
            response = error_response(error)
            response.force_close()  # the body it declared never comes
            count_early_answer(request, error)
            return response
    return await expect_handler(request)


def add_routes(app: web.Application) -> None:
    # Every route answers an unknown Expect header in the gateway's shape (protocol.py).
    post = functools.partial(app.router.add_post, expect_handler=_expect)
    get = functools.partial(app.router.add_get, expect_handler=expect_handler)
    post("/v1/chat/completions", chat_completions)
    post("/v1/completions", completions)
    post("/v1/embeddings", embeddings)
    get("/v1/models", models)
    get("/v1/models/{model:.+}", model)  # ids may hold slashes (org/name)
    get("/healthz", healthz)
    get("/readyz", readyz)
    get("/metrics", metrics)
    get("/openapi.json", openapi)
