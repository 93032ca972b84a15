"""Output moderation: a stream filter that never sends what an output check would block.

`ModerationFilter` (seam `feed(delta) -> delta`, `finish() -> tail`) runs `OutputCheck`,
which is synchronous and fast on purpose: output-scoped rules and structure phrases
(patterns with `scope: output|both`) and invisible-text smuggling. No model runs here:
the filter sits on the token stream and must answer per delta in microseconds.

Hold-back window. Patterns match folded text (`text.fold`, per character), at most
`width` folded characters long (the loader bounds output patterns), and may look at most
`margin` characters beyond a match (lookarounds, `\\b`). A match is *reportable* when it
starts at least `margin` in from the buffer's start (or the buffer starts the stream) and
ends at least `margin` before its end (or the stream has finished). Then:

- any match that includes a character at folded position p and is not reportable yet
  ends after n - margin, so starts after n - margin - width: every character whose
  folded text ends by n - margin - width can be emitted, nothing later is;
- the buffer keeps the last width + 2 * margin folded characters, so every match that
  can still become reportable stays inside it with its context.

So a match in the full text is found before any of its characters is emitted, for any
chunking. A scan runs once SCAN_STEP new characters can be checked (and at the end), and
looks only where a new reportable match can be: a match of a pattern is at most its width
long, so one ending after the previous scan's end starts at most that width before it
(earlier text was already checked). On a match whose category the tier blocks, `feed`
raises `OutputBlocked`; the relay ends the stream (finish_reason `content_filter` plus an
error event) and cancels the upstream. Smuggling counts look at the buffer only
(invisible runs, not a drip).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.pipeline.classify.rules import CompiledPattern
from gateway.pipeline.classify.structure import JAILBREAK, StructureClassifier
from gateway.pipeline.classify.text import fold_char
from gateway.pipeline.classify.verdict import matched
from gateway.policy.spec import CategorySpec, TierSpec


class OutputBlocked(Exception):
    """Raised by `ModerationFilter.feed/finish`: the output would contain these categories."""

    def __init__(self, categories: tuple[str, ...]) -> None:
        super().__init__(f"output blocked by moderation: {', '.join(categories)}")
        self.categories = categories


class OutputCheck:
    """The synchronous check behind the filter; one per policy version."""

    def __init__(self, patterns: tuple[CompiledPattern, ...],
                 structure: StructureClassifier | None, categories: Mapping[str, CategorySpec],
                 widths: tuple[int, ...], margin: int) -> None:
        self.patterns = patterns
        self.structure = structure
        self.categories = categories
        self.widths = widths  # the longest match of each pattern, in folded characters
        self.width = max(widths, default=1)
        self.margin = margin

    def scores(self, raw: str, folded: str, lo: int = 0, hi: int | None = None,
               since: int = 0) -> dict[str, float]:
        """Scores of the patterns with a match inside folded[lo:hi] (plus smuggling).

        `since`: matches ending by there were checked before, so each pattern starts
        looking its own width before it; text past hi + margin cannot change a match."""
        n = len(folded)
        hi = n if hi is None else hi
        endpos = min(n, hi + self.margin)
        scores: dict[str, float] = {}
        for p, width in zip(self.patterns, self.widths, strict=True):
            if p.spec.score <= scores.get(p.spec.category, -1.0):
                continue
            pos = max(lo, since - width)
            while pos <= hi:
                m = p.regex.search(folded, pos, endpos)
                if m is None or m.start() > hi:
                    break
                if m.end() <= hi:
                    scores[p.spec.category] = p.spec.score
                    break
                pos = m.start() + 1
        if self.structure is not None:
            smuggled = self.structure.scores_output(raw, "").get(JAILBREAK, 0.0)
            if smuggled > scores.get(JAILBREAK, 0.0):
                scores[JAILBREAK] = smuggled
        return scores

    def blocked(self, scores: Mapping[str, float], tier: TierSpec) -> tuple[str, ...]:
        return tuple(c for c in matched(scores, self.categories) if tier.action(c) == "block")

    def applies_to(self, tier: TierSpec) -> bool:
        """Whether anything this check can find is blocked for the tier."""
        found = {p.spec.category for p in self.patterns}
        if self.structure is not None:
            found.add(JAILBREAK)
        return any(tier.action(c) == "block" for c in found)

    def check_text(self, text: str, tier: TierSpec) -> tuple[str, ...]:
        """Whole-text form: the blocked categories in `text` (for non-streaming checks)."""
        folded = "".join(fold_char(c) for c in text)
        return self.blocked(self.scores(text, folded), tier)


# Scan once this many new folded characters can be checked, not on every delta: deltas are
# a few characters and a scan looks at a pattern's width of text, while the hold-back
# window (width + margin, hundreds of characters) already dwarfs this extra delay.
SCAN_STEP = 32


class ModerationFilter:
    """One per response choice. Raises OutputBlocked before any blocked text is emitted."""

    __slots__ = ("_at_start", "_buf", "_check", "_emitted", "_folded_len", "_on_block",
                 "_parts", "_scanned", "_tier")

    def __init__(self, check: OutputCheck, tier: TierSpec,
                 on_block: Callable[[tuple[str, ...]], None] | None = None) -> None:
        self._check = check
        self._tier = tier
        self._on_block = on_block
        self._buf = ""  # raw text: an emitted tail for context, then the held-back text
        self._parts: list[str] = []  # fold of each raw character of _buf
        self._folded_len = 0  # len("".join(_parts))
        self._emitted = 0  # how many characters of _buf have been emitted
        self._at_start = True  # _buf begins at the start of the stream
        self._scanned = 0  # folded end of the last scan: matches ending there were checked

    def feed(self, delta: str) -> str:
        if delta:
            self._buf += delta
            folded = [fold_char(c) for c in delta]
            self._parts.extend(folded)
            self._folded_len += sum(map(len, folded))
        return self._advance(final=False)

    def finish(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        check, width, margin = self._check, self._check.width, self._check.margin
        n = self._folded_len
        lo = 0 if self._at_start else margin
        hi = n if final else n - margin
        scan = bool(final and n) or (hi > lo and hi - self._scanned >= SCAN_STEP)
        if scan:
            folded = "".join(self._parts)
            scores = check.scores(self._buf, folded, lo, hi, since=self._scanned)
            hits = check.blocked(scores, self._tier)
            if hits:
                if self._on_block is not None:
                    self._on_block(hits)
                raise OutputBlocked(hits)
            self._scanned = max(self._scanned, hi)
        if final:
            out = self._buf[self._emitted:]
            self._buf, self._parts, self._emitted, self._scanned = "", [], 0, 0
            self._folded_len = 0
            return out
        if not scan:  # what may be emitted depends on the scanned end only: unchanged
            return ""
        safe_end = self._scanned - width  # folded end of what no future match can touch
        keep_from = safe_end - margin  # context kept in front of the earliest such match
        emit_to = trim_to = 0
        trimmed = offset = 0
        for i, part in enumerate(self._parts):
            offset += len(part)
            if offset > safe_end:
                break
            emit_to = i + 1
            if offset <= keep_from:
                trim_to, trimmed = i + 1, offset
        out = self._buf[self._emitted:emit_to] if emit_to > self._emitted else ""
        self._emitted = max(self._emitted, emit_to)
        # Trimming is safe once the dropped text was scanned with its context (see above).
        if trim_to and trimmed >= lo:
            self._buf = self._buf[trim_to:]
            del self._parts[:trim_to]
            self._emitted -= trim_to
            self._scanned -= trimmed
            self._folded_len -= trimmed
            self._at_start = False
        return out
