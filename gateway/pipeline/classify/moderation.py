"""Output moderation: a stream filter that never sends what an output check would block.

`ModerationFilter` (seam `feed(delta) -> delta`, `finish() -> tail`) runs `OutputCheck`,
which is synchronous and fast on purpose: output-scoped rules and structure phrases
(patterns with `scope: output|both`) and invisible-text smuggling. No model runs here:
the filter sits on the token stream and must answer per delta in microseconds.

Hold-back by partial matching. Patterns match folded text (`text.fold`, per character)
and may look at most `margin` characters around a match (lookarounds, `\\b`). On every
delta the filter searches the text not yet emitted with the `regex` module's partial
matching: a *partial* match is one the text ends in the middle of, so the next tokens
could complete it. Then:

- a complete match that ends at least `margin` before the end (or the stream has
  finished) is reported: a category the tier blocks raises `OutputBlocked`;
- the earliest partial match, or complete match still within `margin` of the end (a
  lookahead could still change it), holds back the text from its start;
- everything before the hold is emitted; a match found later must contain text that was
  held, because any prefix of it was a partial match when that prefix ended the text.

JSON string escapes (`\\u0073`, `\\n`, ...) are read as what they stand for: tool-call
arguments and JSON-mode answers are JSON text, which the client decodes, so `m\\u0073fvenom`
is judged as `msfvenom`. The escape's first character carries the decoded character's
fold and the rest fold to nothing; an escape cut off at the end of a delta waits for the
next one.

So nothing a check would block is emitted, for any chunking, and ordinary prose is held
back only while it could be the start of a pattern (a word or two), not by a fixed
window. A trailing run of invisible characters is held too, so a smuggling run is never
half sent. The buffer keeps `margin` characters of emitted text in front for lookbehind.
On a block the relay ends the stream (finish_reason `content_filter` plus an error event)
and cancels the upstream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import regex

from gateway.pipeline.classify.rules import CompiledPattern, joinable, scoped
from gateway.pipeline.classify.structure import JAILBREAK, StructureClassifier
from gateway.pipeline.classify.text import fold, fold_char
from gateway.pipeline.classify.verdict import matched
from gateway.policy.spec import CategorySpec, TierSpec

_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_ESCAPE_TAIL = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z")  # an escape the delta cuts off
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n",
                   "r": "\r", "t": "\t"}


def escaped_parts(text: str) -> list[str]:
    """The fold of each character of `text`, JSON escapes read as what they stand for."""
    parts = [fold_char(c) for c in text]
    for m in _ESCAPE.finditer(text):
        code = m.group(1)
        char = chr(int(code, 16)) if code is not None else _SIMPLE_ESCAPES[m.group(2)]
        if "\ud800" <= char <= "\udfff":
            continue  # half of a surrogate pair: no letter, left as written
        parts[m.start()] = fold_char(char)
        for i in range(m.start() + 1, m.end()):
            parts[i] = ""
    return parts


def _escape_cut(text: str) -> int:
    """Where an escape the end of `text` cuts off begins (len(text) when none)."""
    last = 0
    for m in _ESCAPE.finditer(text):
        last = m.end()
    tail = _ESCAPE_TAIL.search(text, last)
    return tail.start() if tail is not None else len(text)


class OutputBlocked(Exception):
    """Raised by `ModerationFilter.feed/finish`: the output would contain these categories."""

    def __init__(self, categories: tuple[str, ...]) -> None:
        super().__init__(f"output blocked by moderation: {', '.join(categories)}")
        self.categories = categories


def _case(p: CompiledPattern) -> int:
    return regex.IGNORECASE if p.regex.flags & re.IGNORECASE else 0


class OutputCheck:
    """The synchronous check behind the filter; one per policy version."""

    def __init__(self, patterns: tuple[CompiledPattern, ...],
                 structure: StructureClassifier | None, categories: Mapping[str, CategorySpec],
                 widths: tuple[int, ...], margin: int) -> None:
        self.patterns = patterns
        # The same patterns in the `regex` module, which can report partial matches.
        # Case-insensitive only where the pattern needs it (rules.case_flags).
        self.partial = tuple(regex.compile(p.spec.pattern, _case(p) | regex.V0)
                             for p in patterns)
        # All of them in one: when it finds nothing before the end, no pattern can.
        # Every search passes concurrent=False: by default `regex` lets go of the GIL
        # for each match, and taking it back on the event loop waits out the switch
        # interval (5 ms) whenever another thread (ledger, audit writer) is busy.
        self.any = regex.compile(
            "|".join(scoped(p) for p in patterns),
            regex.V0) if joinable(patterns) else None
        self.structure = structure
        self.categories = categories
        self.width = max(widths, default=1)  # the longest match, in folded characters
        self.margin = margin

    def scan(self, raw: str, folded: str, start: int, final: bool, smuggling: bool = True,
             ) -> tuple[dict[str, float], int]:
        """Scores of the reportable matches starting at or after `start`, and the folded
        position from which text must be held back (len(folded) when none). `smuggling`:
        also count invisible characters in `raw` (only new ones can change the count)."""
        n = len(folded)
        confirmed = n if final else n - self.margin
        hold = n
        scores: dict[str, float] = {}
        first = self.any.search(folded, start, partial=not final, concurrent=False) \
            if self.any else None
        # An empty partial match at the very end (a `\b` that more text may satisfy)
        # holds nothing back.
        quiet = self.any is not None and (
            first is None or (first.partial and first.start() >= n))
        for p, rx in zip(() if quiet else self.patterns, self.partial, strict=False):
            pos = start
            while pos < hold:
                m = rx.search(folded, pos, partial=not final, concurrent=False)
                if m is None:
                    break
                if m.partial or m.end() > confirmed:
                    hold = min(hold, m.start())
                    break
                if p.spec.score > scores.get(p.spec.category, -1.0):
                    scores[p.spec.category] = p.spec.score
                pos = m.start() + 1
        if smuggling:
            self._add_smuggling(raw, scores)
        return scores, hold

    def scores(self, raw: str, folded: str) -> dict[str, float]:
        """Scores of every match in a whole text (plus smuggling)."""
        return self.scan(raw, folded, 0, final=True)[0]

    def _add_smuggling(self, raw: str, scores: dict[str, float]) -> None:
        if self.structure is not None:
            smuggled = self.structure.scores_output(raw, "").get(JAILBREAK, 0.0)
            if smuggled > scores.get(JAILBREAK, 0.0):
                scores[JAILBREAK] = smuggled

    def blocked(self, scores: Mapping[str, float], tier: TierSpec) -> tuple[str, ...]:
        if not scores:  # the usual case, once per delta
            return ()
        return tuple(c for c in matched(scores, self.categories) if tier.action(c) == "block")

    def flagged(self, scores: Mapping[str, float], tier: TierSpec) -> tuple[str, ...]:
        return tuple(c for c in matched(scores, self.categories) if tier.action(c) == "flag")

    def applies_to(self, tier: TierSpec) -> bool:
        """Whether anything this check can find is blocked or flagged for the tier."""
        found = {p.spec.category for p in self.patterns}
        if self.structure is not None:
            found.add(JAILBREAK)
        return any(tier.action(c) in ("block", "flag") for c in found)

    def check_text(self, text: str, tier: TierSpec) -> tuple[str, ...]:
        """Whole-text form: the blocked categories in `text` (for non-streaming checks)."""
        folded = "".join(escaped_parts(text))
        return self.blocked(self.scores(text, folded), tier)


class ModerationFilter:
    """One per response choice. Raises OutputBlocked before any blocked text is emitted.

    `_folded` is the fold of `_buf`. While every character of `_buf` has folded to exactly
    one character (always so for ASCII, the common case) positions in both are the same
    and `_parts` is None; the first character that folds to none or several starts
    `_parts`, the fold of each character of `_buf`, to map positions between the two."""

    __slots__ = ("_buf", "_check", "_emitted", "_folded", "_on_block", "_on_flag", "_parts",
                 "_pending", "_tier")
    hides_text = True  # the relay drops logprobs, which would carry the text held back

    def __init__(self, check: OutputCheck, tier: TierSpec,
                 on_block: Callable[[tuple[str, ...]], None] | None = None,
                 on_flag: Callable[[tuple[str, ...]], None] | None = None) -> None:
        self._check = check
        self._tier = tier
        self._on_block = on_block
        self._on_flag = on_flag  # categories the tier flags: served, and recorded
        self._buf = ""  # raw text: up to `margin` emitted characters, then the held text
        self._folded = ""  # fold(_buf)
        self._parts: list[str] | None = None  # fold of each character of _buf, when needed
        self._emitted = 0  # how many characters of _buf have been emitted
        self._pending = ""  # the start of an escape the last delta cut off

    def feed(self, delta: str) -> str:
        if self._pending:
            delta, self._pending = self._pending + delta, ""
        if not delta:
            return ""
        if "\\" in delta:
            cut = _escape_cut(delta)
            delta, self._pending = delta[:cut], delta[cut:]
            return self._feed_parts(delta, escaped_parts(delta)) if delta else ""
        if self._parts is None and delta.isascii():  # one folded character each
            self._buf += delta
            self._folded += fold(delta)
            return self._advance(final=False, invisible=False)
        return self._feed_parts(delta, [fold_char(c) for c in delta])

    def _feed_parts(self, delta: str, folded: list[str]) -> str:
        if self._parts is None:
            self._parts = list(self._folded)
        self._buf += delta
        self._folded += "".join(folded)
        self._parts.extend(folded)
        return self._advance(final=False, invisible="" in folded)

    def finish(self) -> str:
        if self._pending:  # cut off for good: judged as written
            pending, self._pending = self._pending, ""
            out = self._feed_parts(pending, [fold_char(c) for c in pending])
            return out + self._advance(final=True, invisible=True)
        return self._advance(final=True, invisible=True)

    def _folded_at(self, index: int) -> int:
        """Where character `index` of _buf starts in _folded."""
        return index if self._parts is None else sum(map(len, self._parts[:index]))

    def _advance(self, final: bool, invisible: bool) -> str:
        check = self._check
        emitted_folded = self._folded_at(self._emitted)
        scores, hold = check.scan(self._buf, self._folded, emitted_folded, final, invisible)
        hits = check.blocked(scores, self._tier)
        if hits:
            if self._on_block is not None:
                self._on_block(hits)
            raise OutputBlocked(hits)
        if self._on_flag is not None and scores:
            flags = check.flagged(scores, self._tier)
            if flags:
                self._on_flag(flags)
        if final:
            out = self._buf[self._emitted:]
            self._buf, self._folded, self._parts, self._emitted = "", "", None, 0
            return out
        emit_to = self._emit_to(hold, emitted_folded)
        out = self._buf[self._emitted:emit_to]
        self._emitted = emit_to
        self._trim()
        return out

    def _emit_to(self, hold: int, emitted_folded: int) -> int:
        """How far _buf may be emitted: every character whose fold ends by `hold`."""
        parts = self._parts
        if parts is None:
            return max(self._emitted, min(hold, len(self._buf)))
        emit_to, offset = self._emitted, emitted_folded
        for i in range(self._emitted, len(parts)):
            offset += len(parts[i])
            if offset > hold:
                break
            emit_to = i + 1
        while emit_to > self._emitted and not parts[emit_to - 1]:
            emit_to -= 1  # a trailing invisible run waits for what follows it
        return emit_to

    def _trim(self) -> None:
        """Drop emitted text beyond the `margin` characters kept for lookbehind (only once
        there is twice that much, so the walk below runs every few deltas)."""
        margin = self._check.margin
        if self._emitted <= 2 * margin:
            return
        parts = self._parts
        if parts is None:
            keep = self._emitted - margin
            cut = keep
        else:
            keep, folded = self._emitted, 0
            while keep > 0 and folded < margin:
                keep -= 1
                folded += len(parts[keep]) or 1
            cut = sum(map(len, parts[:keep]))
        if keep > 0:
            self._buf = self._buf[keep:]
            self._folded = self._folded[cut:]
            if parts is not None:
                del parts[:keep]
            self._emitted -= keep
