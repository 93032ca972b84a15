"""ClassifyRuntime: the long-lived side of classification, and the builders per policy.

The embedding model loads once per process (seconds, hundreds of MB) and must survive
policy reloads; the guard needs the app's upstream HTTP client. So the app holds one
ClassifyRuntime (opened and closed with the app) and, on every policy (re)load, asks it
for the policy's Chain, ClassifyStage and moderation filter factory. Building is
synchronous and raises `ClassifyConfigError` on anything the policy asks that cannot be
honoured (a required embedding classifier without the `ml` extra, a broken head file, a
guard without that client), so a reload keeps the old pipeline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.context import RequestContext
from gateway.metrics import Metrics
from gateway.pipeline.classify.chain import Chain, Classifier, Guarded
from gateway.pipeline.classify.embedding import (
    Embedder,
    EmbeddingClassifier,
    int8_unavailable,
    missing,
)
from gateway.pipeline.classify.guard import GuardClassifier
from gateway.pipeline.classify.moderation import ModerationFilter, OutputCheck
from gateway.pipeline.classify.rules import RulesClassifier, compile_patterns
from gateway.pipeline.classify.stage import ClassifyStage
from gateway.pipeline.classify.structure import StructureClassifier
from gateway.pipeline.output import OutputFilter
from gateway.pipeline.upstream.http import UpstreamHTTP
from gateway.policy.spec import PolicySpec
from gateway.secret_store import given_secret

log = logging.getLogger("gateway.classify")

FilterFactory = Callable[[RequestContext], OutputFilter | None]


def note_output(ctx: RequestContext, action: str, categories: tuple[str, ...]) -> None:
    """Output moderation's finding, for the audit record and the request metrics. A
    block outranks a flag; a flag marks a request that was otherwise allowed."""
    ctx.output_categories = tuple(dict.fromkeys((*ctx.output_categories, *categories)))
    if action == "block":
        ctx.output_action, ctx.decision = "block", "output_blocked"
    elif ctx.output_action != "block":
        ctx.output_action = "flag"
        if ctx.decision == "allow":
            ctx.decision = "flag"


class ClassifyConfigError(ValueError):
    """The policy's classifier configuration cannot be built here."""


def _pattern_width(pattern: str) -> int:
    from re import _parser  # type: ignore[attr-defined]

    return int(_parser.parse(pattern).getwidth()[1])


class ClassifyRuntime:
    """Open with `await start()`, close with `await close()`; `ready` once start has run."""

    def __init__(self, metrics: Metrics | None = None,
                 http: UpstreamHTTP | None = None,
                 embedder: Embedder | None = None) -> None:
        self.metrics = metrics
        self.http = http
        self.embedder = embedder if embedder is not None else Embedder()
        self.ready = False
        self._preparing: list[concurrent.futures.Future[None]] = []

    async def start(self, load_model: bool = True) -> None:
        """Load the embedding model (when the `ml` extra is installed); idempotent."""
        if load_model:
            await self.embedder.start()
        elif not self.embedder.ready and self.embedder.unavailable is None:
            self.embedder.unavailable = ("the embedding model loads at start-up, and the "
                                         "policy the gateway started with does not use it: "
                                         "restart the gateway to enable it")
        self.ready = True

    async def prepared(self) -> None:
        """Wait until the model is ready for the heads of the chains built so far."""
        pending, self._preparing = self._preparing, []
        for done in pending:
            await asyncio.wrap_future(done)

    async def close(self) -> None:
        await self.embedder.close()

    # --- per policy ----------------------------------------------------------------------

    def build_chain(self, policy: PolicySpec) -> Chain:
        spec = policy.classifiers
        cheap: list[Classifier] = []
        expensive: list[Guarded] = []
        unavailable: list[str] = []
        if spec.rules.enabled and spec.rules.patterns:
            cheap.append(RulesClassifier(spec.rules.patterns))
        if spec.structure.enabled:
            cheap.append(StructureClassifier(spec.structure))
        if spec.embedding.enabled:
            classifier = self._embedding(policy, unavailable)
            if classifier is not None:
                expensive.append(Guarded(classifier, spec.embedding.timeout_s,
                                         spec.embedding.on_error))
        if spec.guard.enabled:
            if self.http is None:
                raise ClassifyConfigError("classifiers.guard is enabled but the runtime has "
                                          "no HTTP client")
            guard = GuardClassifier(spec.guard, self.http, policy.categories,
                                    spec.unverified_category, self.metrics,
                                    api_key=given_secret("guard_api_key"))
            expensive.append(Guarded(guard, spec.guard.timeout_s, spec.guard.on_error))
        return Chain(tuple(cheap), tuple(expensive), policy.categories, roles=spec.roles,
                     unverified=spec.unverified_category, unavailable=tuple(unavailable),
                     max_chars=spec.max_chars)

    def _embedding(self, policy: PolicySpec, unavailable: list[str],
                   ) -> EmbeddingClassifier | None:
        spec = policy.classifiers.embedding
        reason = missing() or self.embedder.unavailable
        if reason is not None:
            if not spec.optional:
                raise ClassifyConfigError(f"classifiers.embedding: {reason}")
            unavailable.append(f"embedding: {reason}")
            log.warning("embedding classifier skipped (optional): %s", reason)
            return None
        from gateway.pipeline.classify.head import HeadError, load_head

        try:
            head = load_head(Path(spec.head) if spec.head else None)
        except HeadError as exc:
            raise ClassifyConfigError(f"classifiers.embedding.head: {exc}") from None
        if spec.int8 and (reason := int8_unavailable()) is not None:
            # Every batch would fail its trace again; the last good policy keeps serving.
            raise ClassifyConfigError(f"classifiers.embedding.int8: {reason}")
        unknown = [c for c in head.categories if policy.categories
                   and c not in policy.categories]
        if unknown:
            raise ClassifyConfigError(f"classifiers.embedding.head: predicts categories not "
                                      f"defined in the policy: {', '.join(unknown)}")
        # Start-up (app.py) and every reload (its `settle`) wait for these before serving.
        self._preparing = [f for f in self._preparing if not f.done()]
        self._preparing.append(self.embedder.prepare(head.layers, head.adapter,
                                                     int8=spec.int8))
        return EmbeddingClassifier(self.embedder, head, spec, self.metrics)

    def stage(self, policy: PolicySpec) -> ClassifyStage:
        if self.metrics is None:
            raise ClassifyConfigError("ClassifyRuntime.stage needs metrics")
        language = policy.classifiers.structure.language
        hints = {}
        if policy.classifiers.structure.enabled and language.enabled:
            hints[language.category] = ("Its classifiers read requests written in: "
                                        f"{', '.join(language.readable)}.")
        return ClassifyStage(self.build_chain(policy), self.metrics,
                             overlap=policy.classifiers.overlap, hints=hints)

    def output_check(self, policy: PolicySpec) -> OutputCheck | None:
        """The output moderation check for this policy, or None when it checks nothing."""
        spec = policy.classifiers
        if not spec.moderation.enabled:
            return None
        specs = list(spec.rules.patterns) if spec.rules.enabled else []
        structure = None
        if spec.moderation.structure and spec.structure.enabled:
            specs += spec.structure.phrases
            structure = StructureClassifier(spec.structure)
        patterns = compile_patterns(specs, ("output", "both"))
        if not patterns and structure is None:
            return None
        widths = tuple(max(1, _pattern_width(p.spec.pattern)) for p in patterns)
        return OutputCheck(patterns, structure, policy.categories, widths,
                           spec.moderation.margin)

    def output_filter(self, policy: PolicySpec) -> FilterFactory:
        """Per-response factory for the pipeline's output_filters (None: no filter)."""
        check = self.output_check(policy)
        tiers = policy.classifiers.moderation.tiers
        metrics = self.metrics

        def make(ctx: RequestContext) -> OutputFilter | None:
            tier = ctx.tier_spec
            if check is None or tier is None or (tiers is not None and tier.name not in tiers):
                return None
            if not check.applies_to(tier):
                return None

            def block(categories: tuple[str, ...]) -> None:
                note_output(ctx, "block", categories)
                if metrics is not None:
                    for category in categories:
                        metrics.output_blocks.labels(tier.name, category).inc()

            def flag(categories: tuple[str, ...]) -> None:
                note_output(ctx, "flag", categories)
                if metrics is not None:
                    for category in categories:
                        metrics.output_flags.labels(tier.name, category).inc()

            return ModerationFilter(check, tier, on_block=block, on_flag=flag)

        return make
