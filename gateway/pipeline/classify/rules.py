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
from typing import Any

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
    look-behind first, stopped it and cost the shipped rules 2.8 times the time.) Those
    of them whose first character is known (`first_characters`) also go behind a
    look-ahead for one of those characters, which rules out the boundaries at the ends
    of words, where `\\b` holds too: the shipped rules' search takes 17 us, not 30."""
    if not joinable(patterns):
        return None
    starting: dict[str, str] = {}  # pattern -> its possible first characters
    bounded: list[str] = []
    parts: list[str] = []
    for p in patterns:
        if not _starts_at_boundary(p.spec.pattern):
            parts.append(scoped(p))
        elif (first := first_characters(p)) is not None:
            starting[scoped(p)] = first
        else:
            bounded.append(scoped(p))
    if bounded:
        parts.insert(0, r"\b(?:" + "|".join(bounded) + ")")
    if starting:
        chars = re.escape("".join(sorted(set("".join(starting.values())))))
        parts.insert(0, rf"\b(?=[{chars}])(?:" + "|".join(starting) + ")")
    try:
        return re.compile("|".join(parts))
    except re.error:
        return None


def first_characters(pattern: CompiledPattern) -> str | None:
    """The characters a match of the pattern can start with, or None when that is not
    plain from Python's own parser (private: any doubt is a None): for example a
    repeat that may be empty first, a character class such as `\\w`, or a case-blind
    letter."""
    if pattern.regex.flags & re.IGNORECASE:
        return None
    try:
        items = _parser.parse(pattern.spec.pattern).data
    except Exception:
        return None
    found = _first(items)
    return "".join(sorted(found)) if found else None


_ZERO_WIDTH = (_constants.AT, _constants.ASSERT, _constants.ASSERT_NOT)
_REPEATS = (_constants.MAX_REPEAT, _constants.MIN_REPEAT)
_MAX_RANGE = 128  # a wider range of characters first (`[\\x00-\\uffff]`) is a None


def _first(items: Iterable[tuple[Any, Any]]) -> set[str] | None:
    """What a match of these parsed items can start with (see `first_characters`)."""
    for op, arg in items:
        if op in _ZERO_WIDTH:  # matches nothing itself: the next item starts the match
            continue
        if op is _constants.LITERAL:
            return {chr(arg)}
        if op is _constants.IN:
            return _first_in(arg)
        if op is _constants.SUBPATTERN:
            _group, add_flags, _del_flags, inner = arg
            return None if add_flags & re.IGNORECASE else _first(inner.data)
        if op is _constants.BRANCH:
            found: set[str] = set()
            for branch in arg[1]:
                first = _first(branch.data)
                if first is None:
                    return None
                found |= first
            return found
        if op in _REPEATS:
            low, _high, inner = arg
            return _first(inner.data) if low >= 1 else None
        return None
    return None  # it can match the empty string


def _first_in(items: Iterable[tuple[Any, Any]]) -> set[str] | None:
    found: set[str] = set()
    for op, arg in items:
        if op is _constants.LITERAL:
            found.add(chr(arg))
        elif op is _constants.RANGE and arg[1] - arg[0] < _MAX_RANGE:
            found.update(map(chr, range(arg[0], arg[1] + 1)))
        else:  # a negation, a category such as \\d, a wide range
            return None
    return found


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
