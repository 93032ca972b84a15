"""The training data: parseable, every section a defined category, a real held-out split."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("numpy", reason="the training script needs numpy (the `ml` extra)")

from gateway.pipeline.classify.train import DATA, read_examples
from tests.pipeline.classify.conftest import POLICY


def test_examples_cover_every_category_with_hard_negatives() -> None:
    examples = read_examples(DATA / "examples.txt")
    assert len(examples) >= 500
    assert len({e.text for e in examples}) == len(examples), "duplicate examples"
    harmful = Counter(e.category for e in examples if e.harmful)
    near = Counter(e.near for e in examples if not e.harmful and e.near)
    expected = set(POLICY.categories) - {"benign", "unverified", "specialized_advice"}
    assert set(harmful) == expected
    assert set(near) == expected
    held = [e for e in examples if e.heldout]
    assert 0.12 < len(held) / len(examples) < 0.28


def test_probes_are_not_training_examples() -> None:
    import json

    texts = {e.text for e in read_examples(DATA / "examples.txt")}
    probes = [json.loads(line)["text"]
              for line in (DATA / "probes.jsonl").read_text().splitlines()]
    assert len(probes) >= 50 and not texts & set(probes)


def test_the_fresh_evaluation_set_is_not_training_data() -> None:
    import json

    texts = {e.text.lower() for e in read_examples(DATA / "examples.txt")}
    rows = [json.loads(line) for line in (DATA / "fresh.jsonl").read_text().splitlines()]
    assert len(rows) >= 500 and not texts & {row["text"].lower() for row in rows}
    assert {row["label"] for row in rows} == {"harmful", "benign"}
    assert all(row["source"].startswith(("xs_", "chat_")) for row in rows)
