"""Rules classifier: regex patterns per category, written by admins in classifiers.yaml.

Patterns run on `fold(text)` (accents, invisible characters and look-alike letters
undone, casefolded), so they are written in lower case and need not care about
obfuscation by zero-width characters or fullwidth letters; and on the prompt's hidden
views (views.py: spaced letters joined, short base64 decoded, rot13 undone when named),
and on the last user message restated when it asks how a harm was or will be done "in
the past" or "in the future" (tense.py: the past-tense attack).
A pattern with an upper-case letter is compiled with IGNORECASE; the others need not be
(folded text has no upper case), which halves their cost. A category's
score is the highest `score` of its patterns that match; one combined pattern finds first
whether any matches at all (most prompts match none). The loader has already compiled
every pattern (a bad one is a `file:line` error and the old policy keeps serving), so
compiling here cannot fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from re import _constants, _parser  # type: ignore[attr-defined]

from gateway.pipeline.classify.tense import restate
from gateway.pipeline.classify.text import PromptText, fold
from gateway.pipeline.classify.views import hidden_views
from gateway.policy.spec import PatternSpec, Scope


@dataclass(frozen=True, slots=True)
class CompiledPattern:
    spec: PatternSpec
    regex: re.Pattern[str]


_ESCAPE = re.compile(r"\\.", re.DOTALL)
_CODE_ESCAPE = re.compile(r"\\[xuUN0-7]")  # a letter by its code: kept case-insensitive
_BACKREFERENCE = re.compile(r"\\[1-9]|\(\?P=")


def case_flags(pattern: str) -> int:
    """IGNORECASE for a pattern with cased letters that casefold would change (outside
    escapes such as \\S or \\W), else 0: on folded text both match the same."""
    letters = _ESCAPE.sub("", pattern)
    if _CODE_ESCAPE.search(pattern) or letters != letters.casefold():
        return re.IGNORECASE
    return 0


def compile_patterns(specs: Iterable[PatternSpec], scopes: tuple[Scope, ...],
                     ) -> tuple[CompiledPattern, ...]:
    return tuple(CompiledPattern(s, re.compile(s.pattern, case_flags(s.pattern)))
                 for s in specs if s.scope in scopes)


def joinable(patterns: tuple[CompiledPattern, ...]) -> bool:
    """Whether the patterns can be joined into one: a back-reference would point at
    another pattern's group."""
    return bool(patterns) and not any(_BACKREFERENCE.search(p.spec.pattern) for p in patterns)


def any_of(patterns: tuple[CompiledPattern, ...]) -> re.Pattern[str] | None:
    """One pattern that matches where any of them does, or None when they cannot be
    joined (see `joinable`; or a global flag inside one).

    Those whose every match starts at a word boundary go behind one more `\\b`: the
    engine tries each alternative at each position, and the shared boundary rules out
    the positions inside words once instead of once per pattern. (Python's parser does
    that itself when every alternative starts with `\\b`; one that does not, such as a
    look-behind first, stopped it and cost the shipped rules 2.8 times the time.)"""
    if not joinable(patterns):
        return None
    bounded: list[str] = []
    parts: list[str] = []
    for p in patterns:
        (bounded if _starts_at_boundary(p.spec.pattern) else parts).append(scoped(p))
    if bounded and not parts:  # all of them: the parser takes their `\b` out itself
        parts = bounded
    elif bounded:
        parts.insert(0, r"\b(?:" + "|".join(bounded) + ")")
    try:
        return re.compile("|".join(parts))
    except re.error:
        return None


def scoped(pattern: CompiledPattern) -> str:
    """The pattern in a group with its own case flag: for joining patterns."""
    return f"(?{'i' if pattern.regex.flags & re.IGNORECASE else ''}:{pattern.spec.pattern})"


def _starts_at_boundary(pattern: str) -> bool:
    """Whether every match of the pattern starts at a word boundary: it starts with `\\b`,
    every alternative of it included (Python's own parser says: it takes a prefix all
    alternatives share out in front)."""
    try:
        first = _parser.parse(pattern).data[0]
    except Exception:  # the parser is CPython's own, private: a doubt is a no
        return False
    return bool(first == (_constants.AT, _constants.AT_BOUNDARY))


def match_scores(patterns: tuple[CompiledPattern, ...], folded: str,
                 any_match: re.Pattern[str] | None = None) -> dict[str, float]:
    """Highest score per category among the patterns that match the folded text."""
    scores: dict[str, float] = {}
    if any_match is not None and any_match.search(folded) is None:
        return scores
    for p in patterns:
        if p.spec.score > scores.get(p.spec.category, -1.0) and p.regex.search(folded):
            scores[p.spec.category] = p.spec.score
    return scores


def matching_ids(patterns: tuple[CompiledPattern, ...], text: str) -> list[str]:
    """Ids of the patterns that match `text` (folded here); for tests and `policy explain`."""
    folded = fold(text)
    return [p.spec.id for p in patterns if p.regex.search(folded)]


def _stems(word: str) -> bool:
    """No vocabulary for `restate`: a regular participle's verb is then its bare stem
    ("created" -> "creat"), which is what the patterns match (`creat\\w*`)."""
    return False


class RulesClassifier:
    """Seam: `async def score(text) -> {category: score}` (computed inline: microseconds)."""

    name = "rules"
    cheap = True  # runs before the model; a block here skips the expensive classifiers

    def __init__(self, patterns: Iterable[PatternSpec]) -> None:
        self.patterns = compile_patterns(patterns, ("prompt", "both"))
        self.any = any_of(self.patterns)

    def scores(self, text: PromptText) -> dict[str, float]:
        folded = fold(text.full)
        scores = match_scores(self.patterns, folded, self.any)
        views = hidden_views(text.full, folded)  # spaced letters, base64, rot13
        restated = restate(text.last_user, _stems)  # the past-tense attack (tense.py)
        if restated is not None:
            views.append(fold(restated))
        for view in views:
            for category, score in match_scores(self.patterns, view, self.any).items():
                scores[category] = max(score, scores.get(category, 0.0))
        return scores

    async def score(self, text: PromptText) -> dict[str, float]:
        return self.scores(text)
