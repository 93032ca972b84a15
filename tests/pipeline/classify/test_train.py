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
    # Not topics the head learns: scored by the chain itself (unverified) and by the
    # language check (other_language).
    expected = set(POLICY.categories) - {"benign", "unverified", "specialized_advice",
                                         "other_language"}
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


@pytest.mark.parametrize(("name", "least", "sources"), [
    ("fresh.jsonl", 500, ("xs_", "chat_")),
    ("blind.jsonl", 190, ("blind_toxic", "blind_hardneg")),
    ("unseen.jsonl", 490, ("orb_safe", "xst_safe", "chat_safe", "chat_toxic", "req_harmful")),
    ("hardneg_dev.jsonl", 440, (
        "target_side", "quoted_speech", "moderation", "support_self_harm",
        "stereotypes_discussed", "figurative", "fiction_safe", "security_defence",
        "legal_history_news", "rough_but_harmless", "harass_", "hate_", "sexual_explicit",
        "self_harm_seek", "violent_request", "crime_request", "scam_request",
        "cyber_request")),
])
def test_the_sets_kept_out_of_training_are_not_training_data(name: str, least: int,
                                                        sources: tuple[str, ...]) -> None:
    import json

    texts = {e.text.lower() for e in read_examples(DATA / "examples.txt")}
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines()]
    assert len(rows) >= least and not texts & {row["text"].lower() for row in rows}
    assert {row["label"] for row in rows} == {"harmful", "benign"}
    assert all(row["source"].startswith(sources) for row in rows)


def test_the_hidden_layer_learns_what_a_line_cannot_and_is_repeatable() -> None:
    """XOR-like data: no logistic model separates it; one hidden ReLU layer does, and the
    same data gives the same weights (seeded, one thread)."""
    pytest.importorskip("torch", reason="the hidden layer is fitted with torch (`ml` extra)")
    import numpy as np

    from gateway.pipeline.classify.head import Head
    from gateway.pipeline.classify.train import fit_binary, fit_hidden

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(400, 2)).astype(np.float32)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.float64)
    w, b = fit_binary(x, y, 1e-4)
    linear = ((x @ w + b > 0) == (y > 0)).mean()
    hidden_w, hidden_b, harm_w, harm_b = fit_hidden(x, y, 32, weight_decay=0.0, dropout=0.0,
                                                    epochs=600)
    head = Head(("crime",), harm_w, harm_b, np.zeros((1, 2), np.float32),
                np.zeros(1, np.float32), {}, hidden_w=hidden_w, hidden_b=hidden_b)
    p_harm = np.array([row["crime"] for row in head.predict(x)])
    assert linear < 0.7 and ((p_harm > 0.5) == (y > 0)).mean() > 0.95
    again = fit_hidden(x, y, 32, weight_decay=0.0, dropout=0.0, epochs=600)
    assert np.array_equal(again[0], hidden_w) and again[3] == harm_b
