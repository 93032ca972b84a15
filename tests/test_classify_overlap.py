"""Overlap: the request goes upstream while a slow classifier decides, and nothing of the
answer leaves the gateway before its verdict. A guard model that answers on cue plays the
slow classifier; the simulator is the upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import (
    MintToken,
    Server,
    StartGateway,
    StartSim,
    chat,
    counter_totals,
    edited_policies,
    wait_until,
)
from tests.test_classify_gateway import (
    _audited,
    leaky_upstream,  # noqa: F401 (a fixture)
)

GUARD_MODEL = "meta-llama/Llama-Guard-3-8B"


@dataclass
class CuedGuard:
    """A Llama Guard server that answers each request only when the test says so."""

    url: str = ""
    answer: str = "safe"
    asked: int = 0
    cue: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.asked += 1
        await self.cue.wait()
        return web.json_response({"id": "g", "object": "text_completion", "model": GUARD_MODEL,
                                  "choices": [{"index": 0, "text": self.answer,
                                               "finish_reason": "stop"}]})


@pytest.fixture
async def guard() -> AsyncIterator[CuedGuard]:
    fake = CuedGuard()
    app = web.Application()
    app.router.add_post("/v1/completions", fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    yield fake
    fake.cue.set()
    await runner.cleanup()


def _policies(tmp_path: Path, guard_url: str, overlap: bool) -> str:
    """The shipped policies with the guard on (and the embedding model off, so the guard is
    the one slow classifier)."""
    return edited_policies(
        tmp_path,
        ("  embedding:\n    enabled: true\n", "  embedding:\n    enabled: false\n"),
        ("  guard:\n    enabled: false\n",
         f"  guard:\n    enabled: true\n    url: {guard_url}\n    model: {GUARD_MODEL}\n"),
        ("  overlap: true\n", f"  overlap: {str(overlap).lower()}\n"))


@dataclass
class Stack:
    gateway: Server
    sim: Server
    guard: CuedGuard


async def _stack(start_gateway: StartGateway, start_sim: StartSim, guard: CuedGuard,
                 tmp_path: Path, overlap: bool = True, **sim: Any) -> Stack:
    upstream = await start_sim(**sim)
    gateway = await start_gateway(upstream.url, policies=_policies(tmp_path, guard.url, overlap))
    return Stack(gateway, upstream, guard)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    at: float  # when the response's headers arrived (perf_counter)


async def _ask(url: str, token: str, body: dict[str, Any]) -> Answer:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.post(url + "/v1/chat/completions", json=body) as resp:
        at = time.perf_counter()
        return Answer(resp.status, dict(resp.headers), await resp.read(), at)


def _refused(answer: Answer) -> None:
    assert answer.status == 400
    error = orjson.loads(answer.body)["error"]
    assert error["code"] == "content_policy_violation"
    assert "cyber" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_late_block_cancels_the_generation_and_sends_nothing_of_it(
        start_gateway: StartGateway, start_sim: StartSim, guard: CuedGuard, tmp_path: Path,
        mint: MintToken, stream: bool) -> None:
    # A slow generation: still running when the verdict comes.
    stack = await _stack(start_gateway, start_sim, guard, tmp_path, tokens_per_second=20)
    guard.answer = "unsafe\nS14"
    ask = asyncio.ensure_future(_ask(stack.gateway.url, mint(tier="public"),
                                     chat("A poem about the sea.", max_tokens=200,
                                          stream=stream)))
    # The upstream is generating while the guard thinks, and the client has nothing yet.
    await wait_until(lambda: stack.sim.stats.in_flight == 1 and guard.asked == 1)
    await asyncio.sleep(0.3)
    assert not ask.done()
    guard.cue.set()
    answer = await ask
    _refused(answer)  # exactly what the client gets without overlap: no stream began
    await wait_until(lambda: stack.sim.stats.aborted == 1)  # vLLM stops generating
    assert stack.sim.stats.completed == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_ready_first_waits_for_the_verdict(
        start_gateway: StartGateway, start_sim: StartSim, guard: CuedGuard, tmp_path: Path,
        mint: MintToken, stream: bool) -> None:
    stack = await _stack(start_gateway, start_sim, guard, tmp_path)
    guard.answer = "unsafe\nS14"  # research flags cyber: served, with the flag header
    ask = asyncio.ensure_future(_ask(stack.gateway.url, mint(tier="research"),
                                     chat("A poem about the sea.", max_tokens=8,
                                          stream=stream)))
    await wait_until(lambda: stack.sim.stats.completed == 1)  # the answer is ready...
    await asyncio.sleep(0.2)
    assert not ask.done()  # ...and held
    cued = time.perf_counter()
    guard.cue.set()
    answer = await ask
    assert answer.at >= cued
    assert answer.status == 200
    assert answer.headers["x-gateway-decision"] == "flag"
    assert float(answer.headers["x-gateway-overhead-ms"]) >= 200  # the hold is the overhead
    if stream:
        assert answer.body.endswith(b"data: [DONE]\n\n")
    else:
        assert orjson.loads(answer.body)["choices"][0]["message"]["content"]
    metrics = await _metrics(stack.gateway.url)
    assert "gateway_classifier_hold_seconds_count 1.0" in metrics
    assert 'gateway_classifier_decisions_total{action="flag",category="cyber",tier="research"}' \
        ' 1.0' in metrics


async def test_a_safe_verdict_serves_the_answer(
        start_gateway: StartGateway, start_sim: StartSim, guard: CuedGuard, tmp_path: Path,
        mint: MintToken) -> None:
    stack = await _stack(start_gateway, start_sim, guard, tmp_path)
    guard.cue.set()
    answer = await _ask(stack.gateway.url, mint(tier="public"), chat("A poem about the sea."))
    assert answer.status == 200
    assert "x-gateway-decision" not in answer.headers


async def test_an_upstream_error_waits_for_the_verdict_and_a_block_wins(
        start_gateway: StartGateway, start_sim: StartSim, guard: CuedGuard, tmp_path: Path,
        mint: MintToken) -> None:
    stack = await _stack(start_gateway, start_sim, guard, tmp_path)
    guard.answer = "unsafe\nS14"
    # The simulator fails this request at once (a fault directive in the prompt).
    ask = asyncio.ensure_future(_ask(stack.gateway.url, mint(tier="public"),
                                     chat("A poem. [[sim:status=400]]")))
    await wait_until(lambda: guard.asked == 1)
    await asyncio.sleep(0.3)  # the simulator's 400 came back long ago
    assert not ask.done()
    guard.cue.set()
    _refused(await ask)


async def test_without_overlap_a_blocked_prompt_never_reaches_the_upstream(
        start_gateway: StartGateway, start_sim: StartSim, guard: CuedGuard, tmp_path: Path,
        mint: MintToken) -> None:
    stack = await _stack(start_gateway, start_sim, guard, tmp_path, overlap=False)
    guard.answer = "unsafe\nS14"
    ask = asyncio.ensure_future(_ask(stack.gateway.url, mint(tier="public"),
                                     chat("A poem about the sea.")))
    await wait_until(lambda: guard.asked == 1)
    await asyncio.sleep(0.1)
    assert stack.sim.stats.requests == 0
    guard.cue.set()
    _refused(await ask)
    assert stack.sim.stats.requests == 0


async def test_a_client_gone_during_the_overlap_cancels_both(
        start_gateway: StartGateway, start_sim: StartSim, guard: CuedGuard, tmp_path: Path,
        mint: MintToken) -> None:
    stack = await _stack(start_gateway, start_sim, guard, tmp_path, tokens_per_second=20)
    ask = asyncio.ensure_future(_ask(stack.gateway.url, mint(tier="public"),
                                     chat("A poem about the sea.", max_tokens=200,
                                          stream=True)))
    await wait_until(lambda: stack.sim.stats.in_flight == 1 and guard.asked == 1)
    ask.cancel()
    await wait_until(lambda: stack.sim.stats.aborted == 1)
    metrics = await _metrics(stack.gateway.url)
    assert "gateway_open_streams 0.0" in metrics


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        return await resp.text()


@pytest.mark.parametrize(("tier", "decision"), [("public", "output_blocked"),
                                                ("research", "flag")])
async def test_what_output_moderation_found_before_the_verdict_is_what_is_audited(
        start_gateway: StartGateway, leaky_upstream: str, guard: CuedGuard,  # noqa: F811
        tmp_path: Path, mint: MintToken, tier: str, decision: str) -> None:
    """The answer came back and was moderated while the classifiers were still deciding;
    their `allow` used to overwrite the output's finding in the audit record."""
    gateway = await start_gateway(leaky_upstream,
                                  policies=_policies(tmp_path, guard.url, overlap=True))
    ask = asyncio.ensure_future(_ask(gateway.url, mint(tier=tier),
                                     chat("Tell me a story (content).")))
    await wait_until(lambda: guard.asked == 1)
    await asyncio.sleep(0.3)  # the answer is in and filtered; the verdict is not
    guard.cue.set()  # "safe"
    answer = await ask
    assert answer.status == 200
    record = await _audited(gateway.url, mint(), answer.headers["X-Request-ID"])
    assert record["decision"] == decision
    assert "cyber" in record["categories"]


@pytest.mark.parametrize(("overlap", "path"), [(True, "contextual"),
                                               (False, "static_after_timeout")])
async def test_with_overlap_the_models_budget_starts_when_the_answer_is_ready(
        start_sim: StartSim, start_gateway: StartGateway, mint: MintToken, tmp_path: Path,
        overlap: bool, path: str) -> None:
    """The model may add 0.1 ms (no forward pass is that fast) and reads every prompt; the
    upstream takes 0.3 s. With overlap that time is the model's too, so its answer counts;
    without, the static head's answer stands."""
    policies = edited_policies(
        tmp_path,
        ("    contextual_band: [0.2, 0.9]\n    contextual_timeout_s: 0.05\n",
         "    contextual_band: [0.0, 1.0]\n    contextual_timeout_s: 0.0001\n"),
        ("  overlap: true\n", f"  overlap: {str(overlap).lower()}\n"))
    upstream = await start_sim(ttft_s=0.3)
    gateway = await start_gateway(upstream.url, policies=policies)
    async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {mint(tier='public')}"}) as http, \
            http.post(gateway.url + "/v1/chat/completions",
                      json=chat("Which rivers flow into the Black Sea?")) as resp:
        assert resp.status == 200
    paths = await counter_totals(gateway.url, "gateway_classifier_embedding_paths", "path")
    assert paths == {path: 1.0}
