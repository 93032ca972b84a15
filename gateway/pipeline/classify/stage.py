"""ClassifyStage: the request stage that classifies the prompt and applies the tier.

Runs after the tier stage (it reads `ctx.tier_spec`). Sets `ctx.verdict` for the audit
record and the decision header, counts metrics, and:

- `block`: refuses with HTTP 400 `content_policy_violation` (invalid_request_error, so
  SDKs do not retry), naming the blocking categories and never the prompt; label "block".
- `flag`: allowed, label "flag" (the app adds `x-gateway-decision: flag`).
- `allow`: ALLOW.

When the expensive classifiers must still run (the cascade's static head was unsure, or a
guard model is configured) and the policy says `overlap`, the stage does not wait for
them: it sets `ctx.pending` (a task that ends in the Decision) and allows provisionally;
the route forwards the request meanwhile and releases nothing before the verdict.

Metrics: `classifier_duration{classifier}` per classifier that ran,
`classifier_errors{classifier, outcome}` per failure, and `classifier_decisions{tier,
category, action}` once per matched category with the request's action (`benign` when
none matched).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.context import RequestContext
from gateway.errors import BadRequest
from gateway.metrics import Metrics
from gateway.pipeline import ALLOW, Decision, deny
from gateway.pipeline.classify.budget import ANSWER_READY
from gateway.pipeline.classify.chain import Chain, Partial, Scored
from gateway.pipeline.classify.text import PromptText, carries_token_ids, prompt_text
from gateway.pipeline.classify.verdict import BENIGN

FLAG = Decision(True, None, "flag")


class ClassifyStage:
    name = "classify"

    def __init__(self, chain: Chain, metrics: Metrics, *, overlap: bool = False,
                 hints: Mapping[str, str] | None = None) -> None:
        self.chain = chain
        self.metrics = metrics
        self.overlap = overlap
        # A sentence added to a refusal for a blocking category the caller can act on
        # (other_language: which languages the classifiers read).
        self.hints = dict(hints or {})

    async def check(self, ctx: RequestContext) -> Decision:
        if ctx.route == "embeddings":
            return ALLOW
        if not (self.chain.cheap or self.chain.expensive
                or carries_token_ids(ctx.body, self.chain.roles)):
            return ALLOW  # nothing configured to classify with: no verdict to record
        text = prompt_text(ctx, self.chain.roles).clipped(self.chain.max_chars)
        first = await self.chain.first(text, ctx.tier_spec)
        if not first.waiting:
            return self._decide(ctx, first.scored)
        if not self.overlap:
            return self._decide(ctx, await self.chain.rest(first, text, ctx.tier_spec))
        ctx.verdict = first.scored.verdict  # until the late one replaces it
        # The model's budget starts when the answer is ready (budget.py): the late task
        # sees this event, the relay sets it.
        ctx.answer_ready = asyncio.Event()
        token = ANSWER_READY.set(ctx.answer_ready)
        try:
            ctx.pending = asyncio.ensure_future(self._late(ctx, first, text))
        finally:
            ANSWER_READY.reset(token)
        return ALLOW

    async def _late(self, ctx: RequestContext, first: Partial, text: PromptText) -> Decision:
        return self._decide(ctx, await self.chain.rest(first, text, ctx.tier_spec))

    def _decide(self, ctx: RequestContext, scored: Scored) -> Decision:
        verdict = scored.verdict
        ctx.verdict = verdict
        for name, seconds in scored.durations.items():
            self.metrics.classifier_duration.labels(name).observe(seconds)
        for name, outcome in scored.errors:
            self.metrics.classifier_errors.labels(name, outcome).inc()
        for category in verdict.categories or (BENIGN,):
            self.metrics.classifier_decisions.labels(ctx.tier, category, verdict.action).inc()
        if verdict.action == "block":
            tier = ctx.tier_spec
            blocking = [c for c in verdict.categories
                        if tier is None or tier.action(c) == "block"]
            message = ("This request was refused by the content policy "
                       f"(categories: {', '.join(blocking)}).")
            message += "".join(f" {self.hints[c]}" for c in blocking if c in self.hints)
            return deny(BadRequest(message, code="content_policy_violation"), "block")
        if verdict.action == "flag":
            return FLAG
        return ALLOW
