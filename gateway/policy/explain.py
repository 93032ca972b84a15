"""`gateway policy explain`: what the pipeline would do to one request, without sending it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from gateway.context import Principal, RequestContext, Route
from gateway.pipeline import Decision, RequestStage
from gateway.pipeline.shape import ShapeStage
from gateway.pipeline.tier import TierStage
from gateway.pipeline.upstream.tokens import estimate
from gateway.policy.spec import PolicySpec

_ROUTES: dict[str, Route] = {"messages": "chat", "prompt": "completions", "input": "embeddings"}


async def explain(policy: PolicySpec, tier: str, body: dict[str, Any],
                  extra_stages: tuple[RequestStage, ...] = ()) -> dict[str, Any]:
    route: Route = next((r for key, r in _ROUTES.items() if key in body), "chat")
    principal = Principal(sub="explain", tier=tier, expires_at=time.time() + 60)
    ctx = RequestContext(request_id="explain", route=route, body=dict(body), model="",
                         principal=principal)
    stages: tuple[RequestStage, ...] = (ShapeStage(), TierStage(policy, b"explain" * 5),
                                        *extra_stages)
    decision: Decision | None = None
    steps = []
    for stage in stages:
        decision = await stage.check(ctx)
        steps.append({"stage": stage.name, "allowed": decision.allowed})
        if not decision.allowed:
            break
    assert decision is not None
    spec = policy.tiers.get(tier)
    report: dict[str, Any] = {
        "policy_version": policy.version,
        "tier": tier,
        "tier_known": spec is not None,
        "route": route,
        "model": ctx.model,
        "decision": decision.label,
        "allowed": decision.allowed,
        "stages": steps,
        "prompt_tokens_estimate": estimate(ctx.body) if decision.allowed else None,
    }
    if decision.error is not None:
        report["error"] = decision.error.body()["error"] | {"status": decision.error.http_status}
    if spec is not None:
        report["limits"] = dataclasses.asdict(policy.limits_for(spec, "explain", None))
        report["categories"] = dict(spec.categories)
    if decision.allowed:
        report["forwarded_body"] = ctx.body
    return report
