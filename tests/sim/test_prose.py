"""Prose mode: long, varied answers with exactly the features asked for."""

from __future__ import annotations

import random
import re

import pytest

from gateway.sim.prose import FEATURES, Prose, compose
from gateway.sim.tokenizer import Tokenizer

# What each feature puts in the text, and nothing else does.
SIGNS = {
    "code": re.compile(r"```python|`[a-z]+\.[a-z]+\(x, y\)`"),
    "json": re.compile(r"```json"),
    "links": re.compile(r"https://"),
    "emoji": re.compile("[\U0001f300-\U0001faff\u2728\u2764\u0301\u0303]"),
    "rtl": re.compile("[\u0590-\u06ff]"),
    "cjk": re.compile("[\u3040-\u30ff\u4e00-\u9fff]"),
}


def _corpus(features: frozenset[str], n: int = 60) -> list[str]:
    rng = random.Random(7)
    return [compose(rng, features) for _ in range(n)]


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_each_feature_appears_only_when_asked(feature: str) -> None:
    with_it = _corpus(frozenset({feature}))
    assert sum(bool(SIGNS[feature].search(t)) for t in with_it) >= 5
    for other, sign in SIGNS.items():
        if other != feature:
            assert not any(sign.search(t) for t in with_it), other


def test_plain_prose_is_long_varied_and_markdown_shaped() -> None:
    texts = _corpus(frozenset())
    assert len(set(texts)) == len(texts)
    words = [len(t.split()) for t in texts]
    assert min(words) >= 30 and sum(words) / len(words) >= 100
    assert any(t.startswith("## ") for t in texts)
    assert any("\n- " in t for t in texts)
    assert all(not any(s.search(t) for s in SIGNS.values()) for t in texts)
    # Answers lean on topics of their own: two answers share few of their words.
    a, b = (set(t.lower().split()) for t in texts[:2])
    assert len(a & b) < 0.5 * min(len(a), len(b))


def test_same_source_same_answer() -> None:
    assert compose(random.Random(3)) == compose(random.Random(3)) != compose(random.Random(4))


def test_pieces_spell_answers_with_a_stop_after_each() -> None:
    stream = Prose(FEATURES, Tokenizer()).pieces(random.Random(5))
    first: list[str] = []
    while (piece := next(stream)) is not None:
        first.append(piece)
    assert "".join(first) == compose(random.Random(5))
    second = next(stream)
    assert second is not None and second.startswith("\n")
