"""What the classifier chain concluded about one request, and how scores become it.

Combination rule (documented in policies/classifiers.yaml too): each classifier returns a
score in [0, 1] per category it knows; the chain keeps, per category, the **maximum** over
classifiers. Max, not mean, because the classifiers are specialists: a rule that fires or a
guard that says `unsafe` must not be diluted by a model that has not seen the trick.
`benign` is then `1 - max(other scores)` (its own score from a classifier is ignored).

A category is *matched* when its score reaches its threshold (categories.yaml; 0.5 when the
category is not defined). `benign` is never matched. The action is the most severe of the
tier's actions for the matched categories (block > flag > allow), `allow` when none match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.policy.spec import Action, CategorySpec, TierSpec

BENIGN = "benign"
DEFAULT_THRESHOLD = 0.5
SEVERITY: Mapping[Action, int] = {"allow": 0, "flag": 1, "block": 2}


@dataclass(frozen=True)
class Verdict:
    """Scores per category, the matched categories (highest score first) and the action."""

    scores: Mapping[str, float]
    categories: tuple[str, ...]
    action: Action
    # Classifiers that contributed (ran to completion), for audit and `eval`.
    classifiers: tuple[str, ...] = field(default=(), compare=False)


def combine(results: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Max per category over the classifiers' scores, clamped to [0, 1]; adds `benign`."""
    scores: dict[str, float] = {}
    for result in results:
        for category, score in result.items():
            if category == BENIGN:
                continue
            # Clamped by comparison (per request, per category: no min/max calls); NaN -> 0.
            value = 1.0 if score >= 1.0 else float(score) if score > 0.0 else 0.0
            old = scores.get(category)
            if old is None or value > old:
                scores[category] = value
    scores[BENIGN] = 1.0 - max(scores.values(), default=0.0)
    return scores


def matched(scores: Mapping[str, float], categories: Mapping[str, CategorySpec],
            ) -> tuple[str, ...]:
    """Categories at or over their threshold, highest score first; never `benign`."""
    hits = [(score, name) for name, score in scores.items() if name != BENIGN
            and score >= (categories[name].threshold if name in categories
                          else DEFAULT_THRESHOLD)]
    return tuple(name for _, name in sorted(hits, key=lambda h: (-h[0], h[1])))


def decide(hits: tuple[str, ...], tier: TierSpec | None) -> Action:
    """The tier's most severe action among the matched categories; `allow` when none.

    Without a tier (a dry run), every matched category counts as `block`.
    """
    action: Action = "allow"
    for category in hits:
        candidate: Action = tier.action(category) if tier is not None else "block"
        if SEVERITY[candidate] > SEVERITY[action]:
            action = candidate
    return action


def verdict(scores: Mapping[str, float], categories: Mapping[str, CategorySpec],
            tier: TierSpec | None, classifiers: tuple[str, ...] = ()) -> Verdict:
    hits = matched(scores, categories)
    return Verdict(scores=dict(scores), categories=hits, action=decide(hits, tier),
                   classifiers=classifiers)
