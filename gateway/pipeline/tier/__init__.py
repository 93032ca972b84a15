"""Tier stage: what the caller's tier lets this request be.

Looks the token's tier up in the policy, refuses (403, naming what was refused) what the
tier forbids, clamps what it may clamp, injects the mandatory system prompt, and sets the
vLLM scheduling `priority` and a per-tenant `cache_salt` so one tenant cannot probe
another's prefix cache. Runs after shape, so fields are already type-checked.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from gateway.context import RequestContext
from gateway.errors import Forbidden, shown
from gateway.pipeline import ALLOW, Decision, deny
from gateway.pipeline.output import asks_logprobs
from gateway.pipeline.shape import generations
from gateway.pipeline.tier.media import check_media
from gateway.pipeline.upstream.tokens import PromptCounter, count_prompt, estimate
from gateway.policy.spec import PolicySpec, RequestCaps, SystemPromptSpec, TierSpec


def _refuse(message: str, code: str, param: str | None = None) -> Decision:
    return deny(Forbidden(message, param=param, code=code), "forbidden")


def _check_caps(caps: RequestCaps, body: dict[str, Any], tier: str) -> Decision:
    # best_of (completions) generates that many sequences upstream, as n does.
    for key in ("n", "best_of"):
        if (body.get(key) or 1) > caps.n:  # null means the default, 1
            return _refuse(f"tier '{tier}' allows at most {key}={caps.n}", "n_not_allowed",
                           key)
    # A completions prompt array generates n (best_of) for each of its prompts.
    if generations(body) > caps.n:
        return _refuse(f"tier '{tier}' allows at most {caps.n} generated sequences per "
                       f"request (n or best_of, for each prompt of a prompt array)",
                       "n_not_allowed", "prompt")
    # Any logprobs asked count: completions' `logprobs: 0` still returns each token's
    # logprob, and chat's top_logprobs asks for them too.
    if asks_logprobs(body) and not caps.logprobs:
        return _refuse(f"tier '{tier}' does not allow logprobs", "logprobs_not_allowed",
                       "logprobs")
    # Chat asks for a count in top_logprobs; completions in logprobs itself (an integer).
    for key in ("top_logprobs", "logprobs"):
        count = body.get(key)
        if type(count) is int and count > caps.top_logprobs:
            return _refuse(f"tier '{tier}' allows at most {caps.top_logprobs} logprobs per "
                           f"token", "logprobs_not_allowed", key)
    if not caps.tools:
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            if body.get(key) is not None:
                return _refuse(f"tier '{tier}' does not allow tools", "tools_not_allowed", key)
    if not caps.response_format and body.get("response_format") is not None:
        return _refuse(f"tier '{tier}' does not allow response_format",
                       "response_format_not_allowed", "response_format")
    for key in ("temperature", "top_p"):
        bounds: tuple[float, float] | None = getattr(caps, key)
        value = body.get(key)
        if bounds is not None and isinstance(value, int | float) and not (
                bounds[0] <= value <= bounds[1]):
            return _refuse(f"tier '{tier}' allows {key} between {bounds[0]} and {bounds[1]}",
                           "sampling_not_allowed", key)
    return ALLOW


def _default_max_tokens(caps: RequestCaps, body: dict[str, Any]) -> str | None:
    """The tier's default where the client asked for no max_tokens: the key it was set
    under, None when the client asked (or the tier has no default)."""
    if any(body.get(k) is not None for k in ("max_completion_tokens", "max_tokens")):
        return None
    default = caps.default_max_tokens or caps.max_tokens
    if default is None:
        return None
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    body[key] = default
    return key


def _cap_max_tokens(caps: RequestCaps, body: dict[str, Any], tier: str) -> Decision:
    # Both spellings are capped: vLLM reads max_completion_tokens first, but a client
    # may send both, and what is forwarded should never exceed the tier's cap.
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is None or caps.max_tokens is None or body[key] <= caps.max_tokens:
            continue
        if caps.max_tokens_mode == "reject":
            return _refuse(f"tier '{tier}' allows at most {key}={caps.max_tokens}",
                           "max_tokens_not_allowed", key)
        body[key] = caps.max_tokens
    return ALLOW


def _check_conversation(caps: RequestCaps, messages: list[dict[str, Any]],
                        tier: str) -> Decision:
    if caps.max_messages is not None and len(messages) > caps.max_messages:
        return _refuse(f"tier '{tier}' allows at most {caps.max_messages} messages",
                       "too_many_messages", "messages")
    turns = sum(1 for m in messages if m.get("role") == "user")
    if caps.max_turns is not None and turns > caps.max_turns:
        return _refuse(f"tier '{tier}' allows at most {caps.max_turns} user turns",
                       "too_many_turns", "messages")
    return ALLOW


def _system_messages(spec: SystemPromptSpec, messages: list[dict[str, Any]],
                     tier: str) -> list[dict[str, Any]] | Decision:
    client_system = [m for m in messages if m.get("role") in ("system", "developer")]
    if client_system and spec.client_system == "reject":
        return _refuse(f"tier '{tier}' does not allow system messages",
                       "system_prompt_not_allowed", "messages")
    if spec.client_system == "drop" or spec.mode == "replace":
        messages = [m for m in messages if m.get("role") not in ("system", "developer")]
    if spec.mode == "none":
        return messages
    return [{"role": "system", "content": spec.text}, *messages]


def _keeps_system_prompt(body: dict[str, Any], tier: str) -> Decision:
    """Refuse what would undo the tier's system prompt: vLLM's `truncate_prompt_tokens`
    keeps only the prompt's last tokens (the system prompt comes first), and completions'
    `echo` would send the system prompt back to the caller."""
    if body.get("truncate_prompt_tokens") is not None:
        return _refuse(f"tier '{tier}' puts a system prompt first: truncate_prompt_tokens "
                       "is not allowed", "truncation_not_allowed", "truncate_prompt_tokens")
    if body.get("echo"):
        return _refuse(f"tier '{tier}' puts a system prompt first: echo is not allowed",
                       "echo_not_allowed", "echo")
    return ALLOW


def _system_prompt_text(spec: SystemPromptSpec, prompt: Any, tier: str) -> Any:
    prefix = spec.prompt_prefix
    if not prefix:
        return prompt
    if isinstance(prompt, str):
        return prefix + prompt
    if all(isinstance(p, str) for p in prompt):
        return [prefix + p for p in prompt]
    return _refuse(f"tier '{tier}' requires a system prompt: token-id prompts are not allowed",
                   "token_prompt_not_allowed", "prompt")


class TierStage:
    name = "tier"

    def __init__(self, policy: PolicySpec, salt_secret: bytes,
                 counter: PromptCounter | None = None) -> None:
        self.policy = policy
        self._salt_secret = salt_secret
        self._counter = counter

    async def check(self, ctx: RequestContext) -> Decision:
        principal = ctx.principal
        tier = self.policy.tiers.get(principal.tier) if principal is not None else None
        if principal is None or tier is None:
            return _refuse("your tier is not configured on this gateway", "unknown_tier")
        ctx.tier = tier.name
        ctx.tier_spec = tier
        if not tier.allows_model(ctx.model):
            return _refuse(f"model '{shown(ctx.model)}' is not available to tier '{tier.name}'",
                           "model_not_allowed", "model")
        if ctx.route == "embeddings":
            return ALLOW
        body = ctx.body
        decision = _check_caps(tier.request, body, tier.name)
        if not decision.allowed:
            return decision
        defaulted = _default_max_tokens(tier.request, body)
        decision = _cap_max_tokens(tier.request, body, tier.name)
        if not decision.allowed:
            return decision
        decision = self._apply_prompt(tier, body)
        if not decision.allowed:
            return decision
        decision = await self._check_prompt_tokens(ctx, tier)
        if not decision.allowed:
            return decision
        if defaulted is not None:
            await self._fit_to_context(ctx, defaulted)
        self._apply_scheduling(ctx, tier, body)
        return ALLOW

    async def _fit_to_context(self, ctx: RequestContext, key: str) -> None:
        """A default max_tokens (the client asked for none) leaves room for the prompt:
        vLLM fills the rest of the context when max_tokens is absent, and would refuse the
        tier's default where prompt + default exceeds the context."""
        context = self._counter.context_length(ctx.model) if self._counter else None
        if context is None or estimate(ctx.body) + ctx.body[key] <= context:
            return  # the estimate errs high: this surely fits, nothing to count
        prompt = await count_prompt(ctx, self._counter)
        if context - prompt >= 1:
            ctx.body[key] = min(ctx.body[key], context - prompt)
        # Else the prompt alone is too long, and vLLM refuses it. The default stays: without
        # it vLLM would fill the context, past the tier's cap where the count was only the
        # estimate (a backend without /tokenize).

    async def _check_prompt_tokens(self, ctx: RequestContext, tier: TierSpec) -> Decision:
        """The tier's prompt cap, on the prompt as forwarded (system prompt included).
        Without a cap nothing is counted here: the rate-limit stage counts when its token
        limits need it (a tokenizer call saved per request otherwise)."""
        cap = tier.request.max_prompt_tokens
        if cap is None:
            return ALLOW
        await count_prompt(ctx, self._counter)
        if ctx.prompt_tokens is not None and ctx.prompt_tokens > cap:
            return _refuse(f"tier '{tier.name}' allows at most {cap} prompt tokens; this "
                           f"prompt has {ctx.prompt_tokens}", "prompt_too_long", "messages")
        return ALLOW

    def _apply_prompt(self, tier: TierSpec, body: dict[str, Any]) -> Decision:
        if tier.system_prompt.mode != "none":
            decision = _keeps_system_prompt(body, tier.name)
            if not decision.allowed:
                return decision
        if "messages" in body:
            for check in (_check_conversation, check_media):
                decision = check(tier.request, body["messages"], tier.name)
                if not decision.allowed:
                    return decision
            shaped = _system_messages(tier.system_prompt, body["messages"], tier.name)
            if isinstance(shaped, Decision):
                return shaped
            body["messages"] = shaped
        elif "prompt" in body:
            prompt = _system_prompt_text(tier.system_prompt, body["prompt"], tier.name)
            if isinstance(prompt, Decision):
                return prompt
            body["prompt"] = prompt
        return ALLOW

    def _apply_scheduling(self, ctx: RequestContext, tier: TierSpec, body: dict[str, Any]) -> None:
        if tier.priority is not None:
            body["priority"] = tier.priority
        assert ctx.principal is not None
        if tier.cache_salt == "shared":
            return
        owner = (f"org:{ctx.principal.org}" if tier.cache_salt == "org" and ctx.principal.org
                 else f"sub:{ctx.principal.sub}")
        body["cache_salt"] = hmac.new(self._salt_secret, owner.encode(),
                                      hashlib.sha256).hexdigest()[:32]
