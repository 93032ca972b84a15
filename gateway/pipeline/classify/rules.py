"""Rules classifier: regex patterns per category, written by admins in classifiers.yaml.

Patterns run on `fold(text)` (NFKC, casefolded, invisible characters dropped), with
IGNORECASE, so they are written in lower case and need not care about obfuscation by
zero-width characters or fullwidth letters. A category's score is the highest `score` of
its patterns that match. The loader has already compiled every pattern (a bad one is a
`file:line` error and the old policy keeps serving), so compiling here cannot fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.pipeline.classify.text import PromptText, fold
from gateway.policy.spec import PatternSpec, Scope


@dataclass(frozen=True, slots=True)
class CompiledPattern:
    spec: PatternSpec
    regex: re.Pattern[str]


def compile_patterns(specs: Iterable[PatternSpec], scopes: tuple[Scope, ...],
                     ) -> tuple[CompiledPattern, ...]:
    return tuple(CompiledPattern(s, re.compile(s.pattern, re.IGNORECASE))
                 for s in specs if s.scope in scopes)


def match_scores(patterns: tuple[CompiledPattern, ...], folded: str) -> dict[str, float]:
    """Highest score per category among the patterns that match the folded text."""
    scores: dict[str, float] = {}
    for p in patterns:
        if p.spec.score > scores.get(p.spec.category, -1.0) and p.regex.search(folded):
            scores[p.spec.category] = p.spec.score
    return scores


def matching_ids(patterns: tuple[CompiledPattern, ...], text: str) -> list[str]:
    """Ids of the patterns that match `text` (folded here); for tests and `policy explain`."""
    folded = fold(text)
    return [p.spec.id for p in patterns if p.regex.search(folded)]


class RulesClassifier:
    """Seam: `async def score(text) -> {category: score}` (computed inline: microseconds)."""

    name = "rules"
    cheap = True  # runs before the model; a block here skips the expensive classifiers

    def __init__(self, patterns: Iterable[PatternSpec]) -> None:
        self.patterns = compile_patterns(patterns, ("prompt", "both"))

    def scores(self, text: PromptText) -> dict[str, float]:
        return match_scores(self.patterns, fold(text.full))

    async def score(self, text: PromptText) -> dict[str, float]:
        return self.scores(text)
