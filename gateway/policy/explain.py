"""`gateway policy explain`: what the pipeline would do to one request, without sending it.

Shape, tier and classification (the policy's chain, embedding model included; the guard,
which needs the upstream, is left out and said so), in that order, as the gateway runs
them; rate limits are reported, not consumed.
"""

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
    verdict = ctx.verdict
    if verdict is not None:
        report["classification"] = {
            "action": verdict.action, "categories": list(verdict.categories),
            "scores": {c: round(s, 4) for c, s in sorted(verdict.scores.items()) if s > 0},
            "classifiers": list(verdict.classifiers)}
    if decision.allowed:
        report["forwarded_body"] = ctx.body
    return report


async def explain_classified(policy: PolicySpec, tier: str,
                             body: dict[str, Any]) -> dict[str, Any]:
    """`explain` with the policy's classifier chain as the last stage."""
    from prometheus_client import CollectorRegistry

    from gateway.metrics import Metrics
    from gateway.pipeline.classify.eval import unhurried
    from gateway.pipeline.classify.runtime import ClassifyRuntime
    from gateway.pipeline.classify.stage import ClassifyStage

    classifiers = policy.classifiers
    guard = classifiers.guard
    offline = dataclasses.replace(policy, classifiers=dataclasses.replace(
        classifiers, guard=dataclasses.replace(guard, enabled=False)))
    runtime = ClassifyRuntime()
    await runtime.start(load_model=classifiers.embedding.enabled)
    try:
        chain = runtime.build_chain(unhurried(offline))
        stage = ClassifyStage(chain, Metrics(CollectorRegistry()))
        report = await explain(policy, tier, body, (stage,))
    finally:
        await runtime.close()
    report["final"] = True
    if "classification" in report:
        report["classification"]["not_run"] = ["guard"] if guard.enabled else []
        report["classification"]["unavailable"] = list(chain.unavailable)
        # The guard runs only in the server (it needs its upstream): it can still refuse
        # what this allows or flags, never undo a block.
        if guard.enabled and report["classification"]["action"] != "block":
            report["final"] = False
            report["note"] = ("the guard classifier was not run: the server may still "
                              "refuse or flag this request")
    return report
