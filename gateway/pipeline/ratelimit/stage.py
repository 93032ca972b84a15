"""Rate-limit stage: reserve tokens at admission; the response's end settles them.

The reservation is the prompt (counted once, here or by the tier stage's cap, when a token
limit applies) plus max_tokens for each of n choices. The tier stage has already set
max_tokens to the tier's default when the client sent none, so a stream can never run
past what was reserved.
"""

from __future__ import annotations

import asyncio
import hashlib
import math

from gateway.context import RequestContext
from gateway.errors import RateLimited, Unavailable
from gateway.metrics import Metrics
from gateway.pipeline import ALLOW, Decision, deny
from gateway.pipeline.ratelimit.limits import Admission, Limiter, Limits
from gateway.pipeline.shape import completion_bound, generations
from gateway.pipeline.upstream.tokens import PromptCounter, count_prompt
from gateway.policy.spec import PolicySpec


def limit_key(sub: str) -> str:
    """Subjects are hashed, so the shared store never holds user identifiers."""
    return hashlib.blake2b(sub.encode(), digest_size=12).hexdigest()


def reservation(ctx: RequestContext) -> int:
    return (ctx.prompt_tokens or 0) + (completion_bound(ctx.body) or 0)


class RateLimitStage:
    name = "ratelimit"

    def __init__(self, limiter: Limiter, policy: PolicySpec, metrics: Metrics,
                 counter: PromptCounter | None = None) -> None:
        self._limiter = limiter
        self._policy = policy
        self._metrics = metrics
        self._counter = counter

    async def check(self, ctx: RequestContext) -> Decision:
        tier, principal = ctx.tier_spec, ctx.principal
        assert tier is not None and principal is not None, "runs after the tier stage"
        spec = self._policy.limits_for(tier, principal.sub, principal.org)
        limits = Limits(spec.requests_per_minute or None, spec.tokens_per_minute or None,
                        spec.concurrent_requests or None, spec.tokens_per_day or None)
        if limits.unlimited:
            return ALLOW
        if limits.tokens_per_minute or limits.tokens_per_day:
            # Embeddings too: their input is all they cost, and an admission that reserved
            # nothing let concurrent ones through far past the budget.
            await count_prompt(ctx, self._counter)
        key = limit_key(principal.sub)
        admission = await self._limiter.admit(key, limits, reservation(ctx))
        # Only the per-minute budget is visible (x-ratelimit-remaining-tokens) to clamp to.
        if (not admission.allowed and admission.refused == "tokens"
                and tier.request.clamp_to_budget):
            admission = await self._clamp(ctx, key, limits, admission)
        if not admission.allowed:
            return self._refuse(ctx, admission)
        self._metrics.ratelimit_decisions.labels(ctx.tier, "admitted", "-").inc()
        ctx.limit = "admitted"
        ctx.response_headers.update(admission.headers)
        if admission.ticket is not None and limits.settles:
            ctx.settle = _Settlement(self._limiter, admission, ctx, limits)
        return ALLOW

    async def _clamp(self, ctx: RequestContext, key: str, limits: Limits,
                     refused: Admission) -> Admission:
        """Lower max_tokens to what the budget still holds, instead of refusing."""
        remaining = int(refused.headers.get("x-ratelimit-remaining-tokens", "0"))
        room = (remaining - (ctx.prompt_tokens or 0)) // generations(ctx.body)
        if room < 1:
            return refused
        name = "max_completion_tokens" if "max_completion_tokens" in ctx.body else "max_tokens"
        ctx.body[name] = min(room, int(ctx.body.get(name) or room))
        return await self._limiter.admit(key, limits, reservation(ctx))

    def _refuse(self, ctx: RequestContext, admission: Admission) -> Decision:
        kind = admission.refused or "requests"
        self._metrics.ratelimit_decisions.labels(ctx.tier, "refused", kind).inc()
        ctx.limit = f"refused:{kind}"
        headers = dict(admission.headers)
        headers["Retry-After"] = str(max(1, math.ceil(admission.retry_after_s)))
        if kind == "tokens_per_day" or "can never be admitted" in admission.message:
            headers["x-should-retry"] = "false"  # the official SDKs stop retrying on this
        message = admission.message or "Rate limit reached; try again later."
        if kind == "store_unavailable":  # fail_closed: the gateway's fault, not the caller's
            return deny(Unavailable(message, headers=headers, code="ratelimit_unavailable"),
                        "ratelimited")
        return deny(RateLimited(message, headers=headers), "ratelimited")


class _Settlement:
    """Settles exactly once, in its own task, so a cancelled handler still refunds."""

    def __init__(self, limiter: Limiter, admission: Admission, ctx: RequestContext,
                 limits: Limits) -> None:
        self._limiter = limiter
        self._admission = admission
        self._ctx = ctx
        # One request never costs more than a token bucket holds (admission refuses one
        # that would need more): a backend's absurd usage count empties the budget at
        # worst, instead of locking the caller out for as long as it takes to pay back.
        self._most = min(n for n in (limits.tokens_per_minute, limits.tokens_per_day,
                                     1 << 62) if n is not None)
        self.task: asyncio.Task[None] | None = None

    def __call__(self) -> None:
        ticket = self._admission.ticket
        if self.task is not None or ticket is None:
            return
        usage = self._ctx.usage
        used = min(self._ctx.prompt_tokens_used + usage.completion_tokens, self._most)
        self.task = asyncio.ensure_future(self._limiter.settle(ticket, used))
        _PENDING.add(self.task)
        self.task.add_done_callback(_PENDING.discard)


_PENDING: set[asyncio.Task[None]] = set()  # strong references until settled
