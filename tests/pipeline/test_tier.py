"""Tier enforcement as truth tables over the shipped policies."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.context import Principal, RequestContext, Route
from gateway.pipeline.shape import ShapeStage
from gateway.pipeline.tier import TierStage
from gateway.policy.loader import load_policy
from tests.conftest import MODEL, ROOT

POLICY = load_policy(ROOT / "policies")
SECRET = b"s" * 32


def _msgs(n: int = 1, role: str = "user") -> list[dict[str, str]]:
    return [{"role": role, "content": f"message {i}"} for i in range(n)]


async def _run(tier: str, body: dict[str, Any], route: Route = "chat", sub: str = "alice",
               org: str | None = None) -> tuple[RequestContext, Any]:
    principal = Principal(sub=sub, tier=tier, org=org, expires_at=time.time() + 60)
    ctx = RequestContext(request_id="r", route=route, body=dict(body), model="",
                         principal=principal)
    decision = await ShapeStage().check(ctx)
    assert decision.allowed
    return ctx, await TierStage(POLICY, SECRET).check(ctx)


@pytest.mark.parametrize(
    ("tier", "extra", "code", "param"),
    [
        ("nonexistent", {}, "unknown_tier", None),
        ("public", {"model": "llama-3-70b-instruct"}, "model_not_allowed", "model"),
        ("public", {"n": 2}, "n_not_allowed", "n"),
        ("public", {"logprobs": True}, "logprobs_not_allowed", "logprobs"),
        # top_logprobs asks for logprobs too: not "at most 0 per token"
        ("public", {"top_logprobs": 1}, "logprobs_not_allowed", "logprobs"),
        ("verified", {"logprobs": True, "top_logprobs": 6}, "logprobs_not_allowed",
         "top_logprobs"),
        ("public", {"tools": [{"type": "function", "function": {"name": "f"}}]},
         "tools_not_allowed", "tools"),
        ("public", {"tool_choice": "auto"}, "tools_not_allowed", "tool_choice"),
        ("public", {"temperature": 1.9}, "sampling_not_allowed", "temperature"),
        ("public", {"messages": _msgs(17)}, "too_many_messages", "messages"),
        ("public", {"messages": _msgs(9)}, "too_many_turns", "messages"),
        ("research", {"max_tokens": 9000}, "max_tokens_not_allowed", "max_tokens"),
        # vLLM keeps the last k prompt tokens: the system prompt, first, would go.
        ("public", {"truncate_prompt_tokens": 20}, "truncation_not_allowed",
         "truncate_prompt_tokens"),
    ],
)
async def test_refusals_are_403_naming_what(tier: str, extra: dict[str, Any], code: str,
                                            param: str | None) -> None:
    _, decision = await _run(tier, {"model": MODEL, "messages": _msgs(), **extra})
    assert not decision.allowed
    assert decision.error.http_status == 403
    assert decision.error.code == code
    assert decision.error.param == param


@pytest.mark.parametrize(
    ("extra", "code", "param"),
    [
        ({"logprobs": 20}, "logprobs_not_allowed", "logprobs"),  # a count in completions
        ({"best_of": 16}, "n_not_allowed", "best_of"),  # that many sequences, like n
        ({"n": 5}, "n_not_allowed", "n"),
    ],
)
async def test_completions_counts_are_capped_like_chats(extra: dict[str, Any], code: str,
                                                        param: str) -> None:
    body = {"model": MODEL, "prompt": "hello", **extra}
    _, decision = await _run("verified", body, route="completions")
    assert not decision.allowed
    assert (decision.error.http_status, decision.error.code, decision.error.param) == (
        403, code, param)
    _, decision = await _run("verified", {**body, **{k: 2 for k in extra}},
                             route="completions")
    assert decision.allowed  # within the tier's caps (top_logprobs 5, n 4)


@pytest.mark.parametrize(("prompt", "n", "allowed"), [
    (["a"] * 8, 1, True),  # research: n 8, eight sequences
    (["a"] * 9, 1, False),  # nine: as n=9 would be
    (["a"] * 4, 2, True),
    (["a"] * 3, 3, False),  # nine sequences
    ([[1, 2]] * 9, 1, False),  # token-id prompts count alike
    ([1, 2, 3, 4, 5, 6, 7, 8, 9], 1, True),  # one prompt of token ids
])
async def test_a_prompt_array_counts_a_sequence_per_prompt(prompt: list[Any], n: int,
                                                          allowed: bool) -> None:
    """The backend generates n sequences for each prompt of the array: a tier's n cap
    bounds them all, or one request returns as many answers as it has prompts."""
    _, decision = await _run("research", {"model": MODEL, "prompt": prompt, "n": n},
                             route="completions")
    assert decision.allowed is allowed
    if not allowed:
        assert (decision.error.code, decision.error.param) == ("n_not_allowed", "prompt")


async def test_completions_logprobs_0_still_asks_for_logprobs() -> None:
    """`logprobs: 0` returns each sampled token's logprob and offset: a tier without
    logprobs refuses it as it refuses 1."""
    body = {"model": MODEL, "prompt": "hello", "logprobs": 0}
    _, decision = await _run("public", body, route="completions")
    assert not decision.allowed
    assert (decision.error.http_status, decision.error.code) == (403, "logprobs_not_allowed")
    _, decision = await _run("verified", body, route="completions")
    assert decision.allowed


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -1), ("top_p", 0), ("top_p", 1.5), ("presence_penalty", 5),
    ("frequency_penalty", -2.5), ("min_p", 2), ("repetition_penalty", 0)])
@pytest.mark.parametrize("tier", ["public", "trusted"])
async def test_values_no_backend_accepts_are_400_whatever_the_tier(
        field: str, value: float, tier: str) -> None:
    principal = Principal(sub="a", tier=tier, org=None, expires_at=time.time() + 60)
    ctx = RequestContext(request_id="r", route="chat", principal=principal, model="",
                         body={"model": MODEL, "messages": _msgs(), field: value})
    decision = await ShapeStage().check(ctx)
    assert not decision.allowed
    assert (decision.error.http_status, decision.error.type, decision.error.param) == (
        400, "invalid_request_error", field)


@pytest.mark.parametrize(
    ("tier", "asked", "forwarded"),
    [("public", None, 256), ("public", 100, 100), ("public", 5000, 512),
     ("verified", None, 1024), ("research", 8000, 8000), ("trusted", None, 2048)],
)
async def test_max_tokens_default_and_clamp(tier: str, asked: int | None,
                                            forwarded: int) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": _msgs()}
    if asked is not None:
        body["max_tokens"] = asked
    ctx, decision = await _run(tier, body)
    assert decision.allowed
    assert ctx.body["max_tokens"] == forwarded


async def test_both_spellings_of_max_tokens_are_capped() -> None:
    body = {"model": MODEL, "messages": _msgs(), "max_completion_tokens": 100,
            "max_tokens": 100_000}
    ctx, decision = await _run("public", body)
    assert decision.allowed
    assert (ctx.body["max_completion_tokens"], ctx.body["max_tokens"]) == (100, 512)
    _, decision = await _run("research", {**body, "max_completion_tokens": 10})
    assert (decision.allowed, decision.error.param) == (False, "max_tokens")


@pytest.mark.parametrize("nulls", [{"n": None}, {"n": None, "max_tokens": None,
                                                 "temperature": None, "top_logprobs": None}])
async def test_explicit_nulls_mean_defaults(nulls: dict[str, Any]) -> None:
    """Found by schemathesis: `"n": null` once reached a comparison and gave a 500."""
    ctx, decision = await _run("public", {"model": MODEL, "messages": _msgs(), **nulls})
    assert decision.allowed
    assert ctx.body["max_tokens"] == 256


async def test_system_prompt_prepended_and_client_system_kept() -> None:
    messages = [{"role": "system", "content": "be brief"}, *_msgs()]
    ctx, decision = await _run("public", {"model": MODEL, "messages": messages})
    assert decision.allowed
    forwarded = ctx.body["messages"]
    assert forwarded[0]["role"] == "system"
    assert forwarded[0]["content"] == POLICY.tiers["public"].system_prompt.text
    assert forwarded[1:] == messages


async def test_completions_prompt_gets_system_text_and_token_prompts_refused() -> None:
    ctx, decision = await _run("public", {"model": MODEL, "prompt": "hello"}, "completions")
    assert decision.allowed
    assert ctx.body["prompt"].endswith("\n\nhello")
    assert ctx.body["prompt"].startswith("You are a helpful assistant.")
    _, decision = await _run("public", {"model": MODEL, "prompt": [1, 2]}, "completions")
    assert decision.error.code == "token_prompt_not_allowed"


async def test_research_tier_forwards_messages_untouched() -> None:
    messages = [{"role": "system", "content": "x"}, *_msgs()]
    ctx, decision = await _run("research", {"model": "any-model", "messages": messages})
    assert decision.allowed
    assert ctx.body["messages"] == messages


async def test_priority_and_cache_salt_per_tenant() -> None:
    a, _ = await _run("public", {"model": MODEL, "messages": _msgs()}, sub="alice")
    b, _ = await _run("public", {"model": MODEL, "messages": _msgs()}, sub="bob")
    assert a.body["priority"] == 10
    assert a.body["cache_salt"] != b.body["cache_salt"]
    assert "alice" not in a.body["cache_salt"]
    # research salts by org: two members of one org share a prefix cache
    c, _ = await _run("research", {"model": MODEL, "messages": _msgs()}, sub="c", org="lab")
    d, _ = await _run("research", {"model": MODEL, "messages": _msgs()}, sub="d", org="lab")
    assert c.body["cache_salt"] == d.body["cache_salt"]
    e, _ = await _run("trusted", {"model": MODEL, "messages": _msgs()})
    assert "cache_salt" not in e.body


async def test_echo_would_hand_back_the_tiers_system_prompt() -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "echo": True}
    _, decision = await _run("public", body, route="completions")
    assert (decision.allowed, decision.error.code, decision.error.param) == (
        False, "echo_not_allowed", "echo")
    _, decision = await _run("trusted", body, route="completions")  # no system prompt
    assert decision.allowed
