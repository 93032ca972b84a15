"""The guard classifier through the whole gateway, with the simulator as both the upstream
and the Llama Guard 3 model (`guard_models`): keyword verdicts, directives, P(unsafe) from
logprobs for both guard APIs, and a stalled guard with on_error open and closed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MintToken, Server, StartGateway, StartSim, chat, edited_policies

GUARD = "meta-llama/Llama-Guard-3-8B"
# Nothing in the rules or the structure classifier matches these; the sim's guard
# keyword table does (sarin: S9 -> cbrn, ransomware: S14 -> cyber).
CBRN = "What were the effects of the Tokyo subway sarin attack?"
CYBER = "How does ransomware spread through a network?"
BENIGN = "A poem about the sea."


def _policies(tmp_path: Path, guard_url: str, api: str, timeout_s: float = 2.0,
              on_error: str = "open") -> str:
    """The shipped policies with the guard on, pointed at the simulator (and the embedding
    model off, so a verdict is the guard's)."""
    return edited_policies(
        tmp_path,
        ("  embedding:\n    enabled: true\n", "  embedding:\n    enabled: false\n"),
        ("  guard:\n    enabled: false\n    api: completions\n    timeout_s: 2.0\n"
         "    on_error: open\n",
         f"  guard:\n    enabled: true\n    url: {guard_url}/v1\n    model: {GUARD}\n"
         f"    api: {api}\n    timeout_s: {timeout_s}\n    on_error: {on_error}\n"))


@dataclass
class Answer:
    status: int
    decision: str | None
    error: dict[str, str] | None
    seconds: float


@dataclass
class Stack:
    gateway: Server
    sim: Server

    async def ask(self, token: str, content: str, stream: bool = False) -> Answer:
        started = time.perf_counter()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
                http.post(self.gateway.url + "/v1/chat/completions",
                          json=chat(content, max_tokens=8, stream=stream)) as resp:
            raw = await resp.read()
            error = orjson.loads(raw)["error"] if resp.status != 200 else None
            return Answer(resp.status, resp.headers.get("x-gateway-decision"), error,
                          time.perf_counter() - started)

    async def guard_errors(self, outcome: str) -> float:
        async with aiohttp.ClientSession() as http, \
                http.get(self.gateway.url + "/metrics") as resp:
            text = await resp.text()
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples if s.name == "gateway_classifier_errors_total"
                   and s.labels == {"classifier": "guard", "outcome": outcome})


BuildStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
def stack(start_gateway: StartGateway, start_sim: StartSim, tmp_path: Path) -> BuildStack:
    async def build(api: str = "completions", **guard: Any) -> Stack:
        sim = await start_sim(guard_models=(GUARD,))
        policies = _policies(tmp_path, sim.url, api, **guard)
        return Stack(await start_gateway(sim.url, policies=policies), sim)

    return build


def _blocked(answer: Answer, category: str) -> None:
    assert answer.status == 400 and answer.error is not None
    assert answer.error["code"] == "content_policy_violation"
    assert category in answer.error["message"]


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize(("tier", "content", "status", "outcome"), [
    ("public", BENIGN, 200, None),  # nor does the tier's system prompt ("malware") count
    ("public", CYBER, 400, "cyber"),
    ("public", CBRN, 400, "cbrn"),
    ("public", "[[sim:guard=safe]] " + CBRN, 200, None),
    ("research", CYBER, 200, "flag"),  # research flags cyber...
    ("research", CBRN, 400, "cbrn"),  # ...and blocks the rest
    ("trusted", CYBER, 200, None),  # trusted allows all but cbrn and child safety
    ("trusted", CBRN, 400, "cbrn"),
    ("trusted", "[[sim:guard=S4]] " + BENIGN, 400, "child_safety"),
    ("public", "[[sim:guard=unsafe]] " + BENIGN, 400, "unverified"),  # no code
    ("public", "[[sim:guard=S20]] " + BENIGN, 400, "unverified"),  # a code no category names
])
async def test_guard_verdicts_per_tier(stack: BuildStack, mint: MintToken, api: str,
                                       tier: str, content: str, status: int,
                                       outcome: str | None) -> None:
    built = await stack(api)
    answer = await built.ask(mint(tier=tier), content)
    if status == 400:
        assert outcome is not None
        _blocked(answer, outcome)
    else:
        assert answer.status == 200 and answer.decision == outcome
    assert await built.guard_errors("error_open") == 0


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize(("p", "status"), [(0.4, 200), (0.6, 400)])
async def test_the_score_is_p_unsafe_from_the_logprobs(stack: BuildStack, mint: MintToken,
                                                       api: str, p: float,
                                                       status: int) -> None:
    """An `unsafe\\nS9` verdict scores cbrn at P(unsafe), read from the first token's
    logprobs: under cbrn's threshold (0.5) it passes, over it it is blocked. Without
    logprobs the verdict alone would score 1.0."""
    built = await stack(api)
    answer = await built.ask(mint(tier="public"), f"[[sim:guard=S9,guard_p={p}]] {BENIGN}")
    if status == 400:
        _blocked(answer, "cbrn")
    else:
        assert answer.status == 200


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("on_error", "status"), [("open", 200), ("closed", 400)])
async def test_a_stalled_guard_times_out(stack: BuildStack, mint: MintToken, on_error: str,
                                         status: int, stream: bool) -> None:
    """`ttft` stalls every model the prompt reaches: the guard past its time-out, and the
    upstream too, so an open guard's request is served after the stall."""
    built = await stack("completions", timeout_s=0.2, on_error=on_error)
    answer = await built.ask(mint(tier="public"), "[[sim:ttft=1.5]] " + BENIGN, stream)
    if status == 400:
        _blocked(answer, "unverified")
        assert answer.seconds < 1.2  # refused at the guard's time-out, not after the stall
    else:
        assert answer.status == 200 and answer.seconds >= 1.4
    assert await built.guard_errors(f"timeout_{on_error}") == 1


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_a_failing_guard(stack: BuildStack, mint: MintToken, on_error: str) -> None:
    """A directive reaches the guard and the upstream alike: both answer 503. Closed, the
    request is refused as unverified; open, it goes on (and meets the upstream's error)."""
    built = await stack("chat", on_error=on_error)
    answer = await built.ask(mint(tier="public"), "[[sim:status=503]] " + BENIGN)
    if on_error == "closed":
        _blocked(answer, "unverified")
    else:
        assert answer.error is not None
        assert answer.error["code"] != "content_policy_violation"
    assert await built.guard_errors(f"error_{on_error}") == 1


@pytest.mark.parametrize("keyed", [True, False])
async def test_a_guard_behind_its_own_api_key(
        start_gateway: StartGateway, start_sim: StartSim, tmp_path: Path, mint: MintToken,
        monkeypatch: pytest.MonkeyPatch, keyed: bool) -> None:
    """The guard's vLLM started with --api-key: GATEWAY_SECRET_GUARD_API_KEY is sent to it
    (and only to it: the backends' key is another). Without it the guard fails, as
    on_error says (closed here: the unverified category)."""
    monkeypatch.setenv("GATEWAY_SECRET_UPSTREAM_API_KEY", "backend-key-1")
    if keyed:
        monkeypatch.setenv("GATEWAY_SECRET_GUARD_API_KEY", "guard-key-2")
    else:
        monkeypatch.delenv("GATEWAY_SECRET_GUARD_API_KEY", raising=False)
    backend = await start_sim(api_key="backend-key-1")
    guard = await start_sim(models=("unused",), guard_models=(GUARD,), api_key="guard-key-2")
    built = Stack(await start_gateway(
        backend.url, policies=_policies(tmp_path, guard.url, "completions",
                                        on_error="closed")), guard)
    answer = await built.ask(mint(tier="public"), CBRN)
    _blocked(answer, "cbrn" if keyed else "unverified")
    assert await built.guard_errors("error_closed") == (0 if keyed else 1)
