"""Shared test data: a secret, a mark, chunking and mark-position helpers."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

from gateway.pipeline.watermark.embed import PayloadFilter
from gateway.pipeline.watermark.payload import MARK_LEN, encode_mark, key_id, make_payload

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
KID = key_id(SECRET, "alice@example.com")
REQUEST_ID = "0123456789abcdef0123456789abcdef"
MARK = encode_mark(make_payload(SECRET, KID, REQUEST_ID, 1_700_000_000, "a1b2c3d4e5f6"))
_SELECTORS = re.compile(f"[\ufe00-\ufe0f\U000e0100-\U000e01ef]{{{MARK_LEN}}}")

PROSE = (
    "The harbor was quiet in the early morning, and the boats rocked gently at their "
    "moorings. A merchant walked along the pier, counting crates of spice and salt. "
    "Nobody expected the storm that would arrive before noon, least of all the old "
    "captain who had sailed these waters for forty years. He watched the sky with "
    "a careful eye. By the time the first drops fell, the market had already emptied, "
    "and the gulls had gone inland. The lighthouse keeper lit the lamp early that day. "
    "Later the town would remember the storm as the worst in a generation, though the "
    "harbor itself came through with little damage. The crates of spice were dry. "
    "In the evening the captain wrote a long letter to his daughter in the capital, "
    "describing the wind, the rain and the strange green light over the water."
)


def split_at(text: str, cuts: Iterable[int]) -> list[str]:
    points = sorted({c for c in cuts if 0 < c < len(text)})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def run_filter(text: str, pieces: Sequence[str] | None = None, mark: str = MARK,
               prompt: str = "") -> tuple[str, list[str]]:
    """(whole output, per-delta outputs) of a fresh PayloadFilter over the pieces."""
    f = PayloadFilter(mark, prompt)
    outs = [f.feed(p) for p in (pieces if pieces is not None else [text])]
    outs.append(f.finish())
    return "".join(outs), outs


def mark_offsets(output: str) -> list[int]:
    """Where each mark sits, as an offset into the original (unmarked) text."""
    offsets, removed = [], 0
    for m in _SELECTORS.finditer(output):
        offsets.append(m.start() - removed)
        removed += MARK_LEN
    return offsets


_EXTRA_WORDS = """apple river stone cloud engine garden silver window market forest letter signal
    bridge lantern mountain harvest planet copper violin castle meadow pencil thunder
    orchard compass harbor saddle velvet kettle ribbon falcon ginger walnut marble canyon
    blanket cobalt fossil glacier hammer island jungle ladder magnet needle oyster parrot
    quartz rocket shadow temple tunnel umbrella valley wagon yellow zebra anchor basket
    candle desert feather goblet helmet insect jacket kernel lizard mirror nectar"""
_VOCAB = sorted(set(PROSE.lower().replace(",", "").replace(".", "").split())
                | set(_EXTRA_WORDS.split()))


def make_texts(n: int, seed: int, words: int = 160) -> list[str]:
    """n distinct prose-like texts of about `words` words each."""
    import random

    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        sentences, count = [], 0
        while count < words:
            k = rng.randint(6, 16)
            sentence = " ".join(rng.choice(_VOCAB) for _ in range(k))
            sentences.append(sentence.capitalize() + rng.choice("..!?"))
            count += k
        texts.append(" ".join(sentences))
    return texts


def edit_words(text: str, rate: float, seed: int) -> str:
    """Substitute or delete about `rate` of the words."""
    import random

    rng = random.Random(seed)
    out = []
    for word in text.split():
        if rng.random() < rate:
            if rng.random() < 0.5:
                out.append(rng.choice(_VOCAB))
        else:
            out.append(word)
    return " ".join(out)
