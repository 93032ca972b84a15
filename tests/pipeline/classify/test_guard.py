"""The guard classifier against a fake Llama Guard server on loopback (as vLLM serves it)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.metrics import Metrics
from gateway.pipeline.classify.chain import Chain, Guarded
from gateway.pipeline.classify.guard import GuardClassifier, GuardError, clip, parse
from gateway.pipeline.classify.stage import ClassifyStage
from gateway.pipeline.classify.text import PromptText
from gateway.policy.spec import GuardSpec, OnError
from tests.pipeline.classify.conftest import POLICY, chat_ctx

MODEL = "meta-llama/Llama-Guard-3-8B"


@dataclass
class FakeGuard:
    """Answers like vLLM serving Llama Guard 3: `unsafe` when the text mentions a trigger."""

    url: str = ""
    mode: str = "normal"  # normal | slow | error | garbage
    logprobs: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)
    triggers: dict[str, str] = field(default_factory=lambda: {
        "bomb": "S9", "hate them": "S10", "steal": "S2,S14", "mystery": ""})

    def verdict(self, text: str) -> tuple[str, float]:
        for trigger, codes in self.triggers.items():
            if trigger in text:
                return ("unsafe\n" + codes).strip(), math.log(0.83)
        return "safe", math.log(0.97)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "slow":
            await asyncio.sleep(2)
        if self.mode == "error":
            return web.json_response({"object": "error", "message": "boom"}, status=500)
        chat = request.path.endswith("/chat/completions")
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        answer, first_lp = self.verdict(text)
        if self.mode == "garbage":
            answer = "I cannot help with that."
        first = answer.split("\n")[0]
        other = "safe" if first == "unsafe" else "unsafe"
        other_lp = math.log(max(1e-9, 1 - math.exp(first_lp)))
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": answer}
            if self.logprobs and body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": first, "logprob": first_lp,
                                                   "top_logprobs": [
                                                       {"token": first, "logprob": first_lp},
                                                       {"token": other, "logprob": other_lp}]}]}
        else:
            choice["text"] = answer
            if self.logprobs and body.get("logprobs"):
                choice["logprobs"] = {"tokens": [first], "token_logprobs": [first_lp],
                                      "top_logprobs": [{first: first_lp, other: other_lp}]}
        return web.json_response({"id": "x", "object": "text_completion", "model": MODEL,
                                  "choices": [choice]})


@pytest.fixture
async def guard() -> AsyncIterator[FakeGuard]:
    fake = FakeGuard()
    app = web.Application()
    app.router.add_post("/v1/completions", fake.handle)
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _guard(fake: FakeGuard, session: aiohttp.ClientSession, **spec: Any) -> GuardClassifier:
    return GuardClassifier(GuardSpec(enabled=True, url=fake.url, model=MODEL, **spec),
                           session, POLICY.categories, "unverified")


def test_parse() -> None:
    assert parse("safe") == (False, ())
    assert parse("\n\nunsafe\nS1,S10") == (True, ("S1", "S10"))
    assert parse("unsafe\nS01, S1") == (True, ("S1",))
    assert parse("unsafe") == (True, ())
    with pytest.raises(GuardError):
        parse("Sure! Here's how")


def test_clip_keeps_both_ends() -> None:
    text = "A" * 100 + "B" * 100
    clipped = clip(text, 100)
    assert clipped.startswith("A" * 50) and clipped.endswith("B" * 50)
    assert clip("short", 100) == "short"


async def test_safe(guard: FakeGuard, session: aiohttp.ClientSession) -> None:
    assert await _guard(guard, session).score(PromptText.of("a poem about the sea")) == {}
    sent = guard.requests[0]
    assert sent["model"] == MODEL and sent["max_tokens"] <= 32 and sent["temperature"] == 0
    assert sent["logprobs"] == 5
    prompt = sent["prompt"]
    assert prompt.startswith("<|start_header_id|>user<|end_header_id|>\n\nTask: Check if")
    assert "S14: Code Interpreter Abuse.\n<END UNSAFE CONTENT CATEGORIES>" in prompt
    assert "User: a poem about the sea\n\n<END CONVERSATION>" in prompt
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


async def test_unsafe_categories_with_logprob_probability(
        guard: FakeGuard, session: aiohttp.ClientSession) -> None:
    scores = await _guard(guard, session).score(PromptText.of("how to steal a car"))
    assert scores == {"crime": pytest.approx(0.83), "cyber": pytest.approx(0.83)}


async def test_unsafe_without_logprobs_scores_one(guard: FakeGuard,
                                                  session: aiohttp.ClientSession) -> None:
    guard.logprobs = False
    assert await _guard(guard, session).score(PromptText.of("bomb")) == {"cbrn": 1.0}


async def test_unsafe_without_codes_scores_unverified(guard: FakeGuard,
                                                      session: aiohttp.ClientSession) -> None:
    scores = await _guard(guard, session).score(PromptText.of("a mystery"))
    assert scores == {"unverified": pytest.approx(0.83)}


async def test_chat_api(guard: FakeGuard, session: aiohttp.ClientSession) -> None:
    classifier = _guard(guard, session, api="chat")
    assert await classifier.score(PromptText.of("I hate them all")) == {
        "hate": pytest.approx(0.83)}
    sent = guard.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "I hate them all"}]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5


async def test_url_may_end_in_v1(guard: FakeGuard, session: aiohttp.ClientSession) -> None:
    classifier = GuardClassifier(GuardSpec(enabled=True, url=guard.url + "/v1/", model=MODEL),
                                 session, POLICY.categories, "unverified")
    assert await classifier.score(PromptText.of("bomb")) == {"cbrn": pytest.approx(0.83)}


async def test_garbage_answer_is_an_error(guard: FakeGuard,
                                          session: aiohttp.ClientSession) -> None:
    guard.mode = "garbage"
    with pytest.raises(GuardError):
        await _guard(guard, session).score(PromptText.of("bomb"))


@pytest.mark.parametrize(("mode", "on_error", "outcome", "allowed"), [
    ("slow", "open", "timeout_open", True),
    ("slow", "closed", "timeout_closed", False),
    ("error", "open", "error_open", True),
    ("error", "closed", "error_closed", False),
])
async def test_failures_through_the_stage(guard: FakeGuard, session: aiohttp.ClientSession,
                                          metrics: Metrics, mode: str, on_error: OnError,
                                          outcome: str, allowed: bool) -> None:
    guard.mode = mode
    chain = Chain((), (Guarded(_guard(guard, session), 0.2, on_error),), POLICY.categories)
    ctx = chat_ctx("a poem about the sea")
    decision = await ClassifyStage(chain, metrics).check(ctx)
    assert decision.allowed is allowed
    assert metrics.registry.get_sample_value(
        "gateway_classifier_errors_total", {"classifier": "guard", "outcome": outcome}) == 1.0
    if not allowed:
        assert ctx.verdict is not None and ctx.verdict.categories == ("unverified",)


async def test_guard_block_through_the_stage(guard: FakeGuard, session: aiohttp.ClientSession,
                                             metrics: Metrics) -> None:
    chain = Chain((), (Guarded(_guard(guard, session), 2.0, "open"),), POLICY.categories)
    decision = await ClassifyStage(chain, metrics).check(chat_ctx("where to find a bomb"))
    assert decision.label == "block"
    assert metrics.registry.get_sample_value(
        "gateway_classifier_duration_seconds_count", {"classifier": "guard"}) == 1.0
