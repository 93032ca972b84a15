"""Text helpers shared by the two parts of bench/watermark.py: where marks sit, where
they must not, excerpts to attribute and how they are edited, what a corpus contains."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.pipeline.watermark.payload import MARK_LEN, strip_marks
from gateway.sim.prose import ADJECTIVES, NOUNS, VERBS

_MARK_RUN = re.compile(f"[\ufe00-\ufe0f\U000e0100-\U000e01ef]{{{MARK_LEN}}}")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_INLINE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"https?://\S+")

# What a corpus must contain for the round trip to mean something.
CONTENTS = {
    "code blocks": re.compile(r"^```python", re.M),
    "JSON blocks": re.compile(r"^```json", re.M),
    "inline code": _INLINE,
    "URLs": _URL,
    "emoji": re.compile("[\U0001f300-\U0001faff\u2728\u2764]"),
    "RTL": re.compile("[\u0590-\u06ff]"),
    "CJK": re.compile("[\u3040-\u30ff\u4e00-\u9fff]"),
}


def contents(texts: list[str]) -> str:
    """How many of the texts hold each kind of content, e.g. 'code blocks 7, emoji 3'."""
    return ", ".join(f"{name} {sum(bool(p.search(t)) for t in texts)}"
                     for name, p in CONTENTS.items())


def mark_offsets(out: str) -> list[int]:
    """Where each mark sits in the text once all marks are removed."""
    offsets, removed = [], 0
    for m in _MARK_RUN.finditer(out):
        offsets.append(m.start() - removed)
        removed += MARK_LEN
    return offsets


def misplaced(out: str, original: str) -> bool:
    """Whether a mark sits inside code, inline code or a URL of the original."""
    spans = [m.span() for p in (_FENCE, _INLINE, _URL) for m in p.finditer(original)]
    return any(a < o < b for o in mark_offsets(out) for a, b in spans)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def prose_run(marked: str) -> list[str]:
    """The words of the longest run of consecutive prose paragraphs in a response (what a
    person would quote), marks left where they are."""
    best: list[str] = []
    run: list[str] = []
    for block in marked.split("\n\n"):
        plain = strip_marks(block)
        if not plain.startswith(("```", "- ", "#")) and plain.isascii():
            run.extend(block.split(" "))
            if len(run) > len(best):
                best = list(run)
        else:
            run = []
    return best


def excerpt(words: list[str], rng: random.Random) -> str:
    """50..120 consecutive words."""
    n = rng.randint(50, min(120, len(words)))
    first = rng.randrange(len(words) - n + 1)
    return " ".join(words[first:first + n])


def edit(words: list[str], rate: float, rng: random.Random) -> list[str]:
    """Each word, with probability `rate`, substituted or deleted (half and half)."""
    vocab = NOUNS + VERBS + ADJECTIVES
    out = []
    for w in words:
        if rng.random() < rate:
            if rng.random() < 0.5:
                out.append(rng.choice(vocab))
        else:
            out.append(w)
    return out


@dataclass
class Results:
    """Printed as they come, kept for the summary (and --json: label -> value)."""

    lines: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, value: str) -> None:
        self.lines.append(f"  {label:<62} {value}")
        self.values[label.strip()] = value
        print(self.lines[-1], flush=True)
