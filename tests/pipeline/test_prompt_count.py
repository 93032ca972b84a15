"""The prompt is counted (a tokenizer round trip) only where a cap or a token limit needs it,
and then once: the tier's prompt cap and the rate limiter's token reservation."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.context import Principal, RequestContext
from gateway.metrics import Metrics
from gateway.pipeline.ratelimit.memory import MemoryLimiter
from gateway.pipeline.ratelimit.stage import RateLimitStage, reservation
from gateway.pipeline.shape import ShapeStage
from gateway.pipeline.tier import TierStage
from gateway.pipeline.upstream.tokens import PromptCounter
from gateway.policy.loader import load_policy
from gateway.policy.spec import LimitsSpec, PolicySpec
from tests.conftest import (
    MODEL,
    ROOT,
    MintToken,
    StartGateway,
    chat,
    chat_answer,
    fake_backend,
)

POLICY = load_policy(ROOT / "policies")


class CountingCounter(PromptCounter):
    """Answers a fixed count and remembers how often it was asked (no backend)."""

    def __init__(self, answer: int, context: int | None = None) -> None:
        self.answer = answer
        self.context = context
        self.calls = 0

    async def _count(self, ctx: RequestContext) -> int:
        self.calls += 1
        return self.answer

    def context_length(self, model: str) -> int | None:
        return self.context


async def _ctx(tier: str, body: dict[str, Any]) -> RequestContext:
    principal = Principal(sub="alice", tier=tier, expires_at=time.time() + 60)
    ctx = RequestContext(request_id="r", route="chat", body=body, model="",
                         principal=principal)
    assert (await ShapeStage().check(ctx)).allowed
    return ctx


def _with_limits(tier: str, **limits: int | None) -> PolicySpec:
    spec = POLICY.tiers[tier]
    tiers = {**POLICY.tiers, tier: replace(spec, limits=LimitsSpec(**limits))}
    return replace(POLICY, tiers=tiers)


async def _through(policy: PolicySpec, tier: str, counter: CountingCounter,
                   ) -> tuple[RequestContext, Any]:
    ctx = await _ctx(tier, chat("How tall is Mont Blanc?"))
    decision = await TierStage(policy, b"s" * 32, counter).check(ctx)
    if decision.allowed:
        stage = RateLimitStage(MemoryLimiter(), policy, Metrics(CollectorRegistry()), counter)
        decision = await stage.check(ctx)
    return ctx, decision


async def test_a_capped_tier_counts_and_refuses_a_prompt_over_its_cap() -> None:
    cap = POLICY.tiers["public"].request.max_prompt_tokens
    assert cap is not None
    counter = CountingCounter(cap + 1)
    ctx, decision = await _through(POLICY, "public", counter)
    assert decision.error is not None and decision.error.code == "prompt_too_long"
    assert counter.calls == 1
    counter = CountingCounter(cap)
    ctx, decision = await _through(POLICY, "public", counter)
    assert decision.allowed
    assert counter.calls == 1  # the cap's count is reused by the token reservation
    assert reservation(ctx) == cap + ctx.body["max_tokens"]


async def test_no_cap_and_no_token_limit_count_nothing() -> None:
    assert POLICY.tiers["trusted"].request.max_prompt_tokens is None
    counter = CountingCounter(10)
    policy = _with_limits("trusted", requests_per_minute=100)
    ctx, decision = await _through(policy, "trusted", counter)
    assert decision.allowed
    assert counter.calls == 0 and ctx.prompt_tokens is None


async def test_a_token_limit_counts_the_prompt_once() -> None:
    counter = CountingCounter(77)
    for limits in ({"tokens_per_minute": 10_000}, {"tokens_per_day": 10_000}):
        counter.calls = 0
        ctx, decision = await _through(_with_limits("trusted", **limits), "trusted", counter)
        assert decision.allowed
        assert counter.calls == 1 and ctx.prompt_tokens == 77
        assert reservation(ctx) == 77 + ctx.body["max_tokens"]


async def test_without_a_tokenizer_the_estimate_counts() -> None:
    ctx = await _ctx("trusted", chat("x" * 300))
    policy = _with_limits("trusted", tokens_per_minute=10_000)
    assert (await TierStage(policy, b"s" * 32).check(ctx)).allowed
    stage = RateLimitStage(MemoryLimiter(), policy, Metrics(CollectorRegistry()))
    assert (await stage.check(ctx)).allowed
    assert ctx.prompt_tokens == 100 + 4  # ceil(300 / 3) + 4 per message


async def test_the_tokenizer_call_carries_the_request_id(
        start_gateway: StartGateway, servers: list[web.AppRunner], mint: MintToken) -> None:
    """The backend's logs of a request's /tokenize call join the gateway's, as its
    completion call does."""
    seen: dict[str, str] = {}

    async def backend(request: web.Request) -> web.StreamResponse:
        seen[request.path] = request.headers.get("x-request-id", "")
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": MODEL}]})
        if request.path == "/tokenize":
            return web.json_response({"count": 7})
        if request.path == "/v1/chat/completions":
            return chat_answer()
        return web.Response()

    gateway = await start_gateway(await fake_backend(backend, servers))
    headers = {"Authorization": f"Bearer {mint(tier='public')}", "x-request-id": "join-me-1"}
    async with aiohttp.ClientSession(headers=headers) as http, \
            http.post(gateway.url + "/v1/chat/completions", json=chat()) as resp:
        assert resp.status == 200
    assert seen["/tokenize"] == seen["/v1/chat/completions"] == "join-me-1"


async def test_a_default_max_tokens_leaves_room_for_the_prompt() -> None:
    """vLLM fills the rest of the context when max_tokens is absent; the tier's default
    (2048 on trusted) made a 7,006-token prompt on an 8,192-token model a 400 that the
    same request straight to vLLM did not get (found by a black-box check)."""
    long = "word " * 9000  # the high-side estimate says it may not fit: counted
    counter = CountingCounter(7006, context=8192)
    ctx = await _ctx("trusted", chat(long))
    assert (await TierStage(POLICY, b"s" * 32, counter).check(ctx)).allowed
    assert ctx.body["max_tokens"] == 8192 - 7006 and counter.calls == 1

    counter = CountingCounter(7006, context=8192)  # the client's own max_tokens stands
    ctx = await _ctx("trusted", chat(long, max_tokens=2000))
    assert (await TierStage(POLICY, b"s" * 32, counter).check(ctx)).allowed
    assert ctx.body["max_tokens"] == 2000 and counter.calls == 0

    counter = CountingCounter(12, context=8192)  # surely fits: nothing counted
    ctx = await _ctx("trusted", chat("How tall is Mont Blanc?"))
    assert (await TierStage(POLICY, b"s" * 32, counter).check(ctx)).allowed
    assert ctx.body["max_tokens"] == 2048 and counter.calls == 0


async def test_a_long_prompt_without_max_tokens_is_served_as_vllm_would(
        start_gateway: StartGateway, sim: Any, mint: MintToken,
        http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(sim.url)
    body = chat("hello world " * 2300)  # about 7,000 of the simulator's 8,192 tokens
    async with http.post(sim.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200  # straight to the backend
    async with http.post(gateway.url + "/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {mint(tier='trusted')}"}) as resp:
        assert resp.status == 200, await resp.text()
        usage = (await resp.json())["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 8192
    assert usage["prompt_tokens"] + 2048 > 8192  # the default alone would not have fit
