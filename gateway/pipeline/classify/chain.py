"""The classifier chain: the configured classifiers run on one text -> a Verdict.

Order: the *cheap* classifiers (rules, structure: microseconds, inline) run first; when
their scores already make the tier's action `block`, or the tier allows every category
(nothing the model says could change the action), the expensive ones (embedding, guard)
are skipped. Next each expensive one may answer at once (`quick`: the embedding
cascade's static head when it is sure). The others run concurrently (`Chain.rest`,
which the classify stage may overlap with the upstream), each under its own
`timeout_s`; a time-out or an error either adds nothing (`on_error: open`) or scores the
unverified category 1.0 (`on_error: closed`), and is reported in `Scored.errors` as
(classifier, outcome) with outcome one of timeout_open, timeout_closed, error_open,
error_closed. Scores are combined by `verdict.combine` (max per category).

A prompt that holds token ids (`PromptText.opaque`) scores the unverified category 1.0:
the tier decides whether unreadable prompts pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.pipeline.classify.text import PromptText
from gateway.pipeline.classify.verdict import Verdict, combine, verdict
from gateway.policy.spec import MAX_CLASSIFIED_CHARS, CategorySpec, OnError, TierSpec

log = logging.getLogger("gateway.classify")


class Classifier(Protocol):
    """Seam shared by every classifier: scores in [0, 1] for the categories it knows."""

    name: str
    cheap: bool  # inline and fast: may run first and in output moderation

    async def score(self, text: PromptText) -> dict[str, float]: ...


class Expensive(Classifier, Protocol):
    """A classifier that may have to wait (a model, a remote guard)."""

    def quick(self, text: PromptText) -> dict[str, float] | None:
        """Its scores when they can be had at once, without waiting; else None."""
        ...


@dataclass(frozen=True, slots=True)
class Guarded:
    """An expensive classifier with its time budget and failure mode."""

    classifier: Expensive
    timeout_s: float
    on_error: OnError


@dataclass(frozen=True, slots=True)
class Scored:
    verdict: Verdict
    durations: Mapping[str, float]  # seconds per classifier that ran
    errors: tuple[tuple[str, str], ...]  # (classifier, outcome)


@dataclass(frozen=True, slots=True)
class Partial:
    """The first part of a run: final when nothing is `waiting` for `Chain.rest`."""

    scored: Scored
    results: list[dict[str, float]]
    waiting: tuple[Guarded, ...]


def _allows_everything(tier: TierSpec | None) -> bool:
    """A tier whose every action is allow cannot be changed by the model: skip it."""
    return tier is not None and all(a == "allow" for a in tier.categories.values())


class Chain:
    """Immutable, built per policy version by `ClassifyRuntime.build_chain`."""

    def __init__(self, cheap: tuple[Classifier, ...], expensive: tuple[Guarded, ...],
                 categories: Mapping[str, CategorySpec], *, roles: tuple[str, ...] = ("user",),
                 unverified: str = "unverified", unavailable: tuple[str, ...] = (),
                 max_chars: int = MAX_CLASSIFIED_CHARS) -> None:
        self.cheap = cheap
        self.expensive = expensive
        self.categories = categories
        self.roles = roles
        self.max_chars = max_chars  # longer text: its first and last halves (PromptText)
        self.unverified = unverified
        self.unavailable = unavailable  # why configured classifiers are not in the chain

    @property
    def names(self) -> tuple[str, ...]:
        return (*(c.name for c in self.cheap), *(g.classifier.name for g in self.expensive))

    async def classify(self, text: PromptText, tier: TierSpec | None) -> Verdict:
        return (await self.run(text, tier)).verdict

    async def run(self, text: PromptText, tier: TierSpec | None) -> Scored:
        first = await self.first(text, tier)
        return await self.rest(first, text, tier) if first.waiting else first.scored

    async def first(self, text: PromptText, tier: TierSpec | None) -> Partial:
        """The cheap classifiers and the expensive ones' quick answers: final, or the
        expensive classifiers that must still run (`Chain.rest`)."""
        results: list[dict[str, float]] = []
        durations: dict[str, float] = {}
        if text.opaque:
            results.append({self.unverified: 1.0})
        for classifier in self.cheap:
            started = time.perf_counter()
            results.append(await classifier.score(text))
            durations[classifier.name] = time.perf_counter() - started
        early = verdict(combine(results), self.categories, tier, tuple(durations))
        if early.action == "block" or not self.expensive or _allows_everything(tier):
            return Partial(Scored(early, durations, ()), results, ())
        waiting: list[Guarded] = []
        for g in self.expensive:
            started = time.perf_counter()
            quick = g.classifier.quick(text)
            if quick is None:
                waiting.append(g)
                continue
            results.append(quick)
            durations[g.classifier.name] = time.perf_counter() - started
        if len(waiting) < len(self.expensive):
            early = verdict(combine(results), self.categories, tier, tuple(durations))
        if early.action == "block":  # scores are combined by max: nothing can lower it
            waiting.clear()
        return Partial(Scored(early, durations, ()), results, tuple(waiting))

    async def rest(self, first: Partial, text: PromptText, tier: TierSpec | None) -> Scored:
        """The expensive classifiers that had no quick answer, combined with the rest."""
        results = list(first.results)
        durations = dict(first.scored.durations)
        ran = list(durations)
        errors: list[tuple[str, str]] = []
        waiting = first.waiting
        if len(waiting) == 1:  # the usual case: no task to schedule, no loop turn
            outcomes = [await self._guarded(waiting[0], text)]
        else:
            outcomes = await asyncio.gather(*(self._guarded(g, text) for g in waiting))
        for g, (scores, seconds, outcome) in zip(waiting, outcomes, strict=True):
            durations[g.classifier.name] = seconds
            if outcome is None:
                ran.append(g.classifier.name)
            else:
                errors.append((g.classifier.name, outcome))
            results.append(scores)
        return Scored(verdict(combine(results), self.categories, tier, tuple(ran)),
                      durations, tuple(errors))

    async def _guarded(self, g: Guarded, text: PromptText,
                       ) -> tuple[dict[str, float], float, str | None]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(g.timeout_s):
                scores = await g.classifier.score(text)
            return scores, time.perf_counter() - started, None
        except TimeoutError:
            kind = "timeout"
        except Exception as exc:
            log.warning("classifier %s failed: %s: %s", g.classifier.name,
                        exc.__class__.__name__, exc)
            kind = "error"
        failed = {self.unverified: 1.0} if g.on_error == "closed" else {}
        return failed, time.perf_counter() - started, f"{kind}_{g.on_error}"
