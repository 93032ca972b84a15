"""The shipped head file and its loader."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

np = pytest.importorskip("numpy", reason="the embedding head needs numpy (the `ml` extra)")

from gateway.pipeline.classify.head import HeadError, load_head  # noqa: E402
from tests.pipeline.classify.conftest import POLICY  # noqa: E402


def test_shipped_head_matches_the_taxonomy() -> None:
    head = load_head()
    assert head.layers == (2, 3, 4) and head.dim == 384 * len(head.layers)
    assert head.hidden_w is not None and head.hidden_w.shape == (128, head.dim)
    assert head.fast is not None and head.fast.dim == 384  # static vectors: one table
    assert head.fast.adapter is None  # the static table is read as shipped
    assert head.adapter is not None and head.meta["adapter_rank"] == 8
    assert all(a.shape[0] == 8 for a, _ in head.adapter.updates.values())
    assert set(head.categories) <= set(POLICY.categories) - {"benign", "unverified"}
    assert head.meta["encoder"] == "all-MiniLM-L6-v2"
    assert head.meta["examples"] >= 500


def test_scores_are_probabilities_and_the_top_carries_p_harm() -> None:
    head = load_head()
    x = np.random.default_rng(0).normal(size=(3, head.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for row in head.predict(x):
        assert all(0.0 <= v <= 1.0 for v in row.values())
        top = max(row.values())
        assert sum(v == top for v in row.values()) >= 1


@pytest.mark.parametrize("content", ["", "{}", '{"format": "other"}',
                                     '{"format": "gateway-head/1", "categories": ["a"]}'])
def test_bad_head_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "head.json"
    path.write_text(content)
    with pytest.raises(HeadError, match=str(path)):
        load_head(path)


def test_the_fast_head_round_trips_and_must_match_categories(tmp_path: Path) -> None:
    import json
    from dataclasses import replace

    head = load_head()
    assert head.fast is not None and head.fast.categories == head.categories
    path = tmp_path / "head.json"
    head.save(path)
    again = load_head(path)
    assert again.fast is not None
    assert np.allclose(again.fast.harm_w, head.fast.harm_w, atol=1e-6)
    raw = json.loads(path.read_text())
    raw["fast"]["categories"] = list(reversed(raw["fast"]["categories"]))
    path.write_text(json.dumps(raw))
    with pytest.raises(HeadError, match="fast head"):
        load_head(path)
    replace(head, fast=None).save(path)
    assert load_head(path).fast is None


@pytest.mark.parametrize("which", ["contextual", "fast"])
def test_predict_matches_the_documented_formula(which: str) -> None:
    """P(harm) * P(c | harm) / max_k P(k | harm), with the logistic (over the hidden ReLU
    layer when there is one) and the softmax spelt out, row by row and whatever the batch."""
    head = load_head()
    if which == "fast":
        assert head.fast is not None and head.fast.hidden_w is None
        head = head.fast
    x = np.random.default_rng(1).normal(size=(5, head.dim)).astype(np.float64)
    inputs = x if head.hidden_w is None else np.maximum(x @ head.hidden_w.T + head.hidden_b, 0)
    harm = 1 / (1 + np.exp(-(inputs @ head.harm_w + head.harm_b)))
    logits = x @ head.cat_w.T + head.cat_b
    cat = np.exp(logits - logits.max(axis=1, keepdims=True))
    cat /= cat.sum(axis=1, keepdims=True)
    expected = harm[:, None] * cat / cat.max(axis=1, keepdims=True)
    rows = head.predict(x.astype(np.float32))
    got = np.array([[row[c] for c in head.categories] for row in rows])
    assert np.allclose(got, expected, atol=1e-5)
    assert head.predict(x[2:3].astype(np.float32)) == rows[2:3]
    # Extreme logits neither overflow nor leave [0, 1].
    far = head.predict((x[:1] * 1e4).astype(np.float32))[0]
    assert all(0.0 <= v <= 1.0 for v in far.values())


def test_layers_must_exist_and_match_the_weights(tmp_path: Path) -> None:
    import json

    raw = load_head().to_json()
    path = tmp_path / "head.json"
    for layers, error in (([7], r"within 1\.\.6"), ([], r"within 1\.\.6"),
                          ([2, 3], "needs 768 inputs, not 1152")):
        path.write_text(json.dumps({**raw, "layers": layers}))
        with pytest.raises(HeadError, match=error):
            load_head(path)
    # A head written before `layers` existed read the last layer: it still loads as such.
    old = {**raw["fast"], "format": "gateway-head/1"}
    del old["layers"]
    path.write_text(json.dumps(old))
    assert load_head(path).layers == (6,)


def test_the_hidden_layer_round_trips_and_its_shapes_are_checked(tmp_path: Path) -> None:
    import json

    head = load_head()
    path = tmp_path / "head.json"
    head.save(path)
    again = load_head(path)
    assert again.hidden_w is not None and head.hidden_w is not None
    assert np.allclose(again.hidden_w, head.hidden_w, atol=1e-6)
    x = np.random.default_rng(2).normal(size=(2, head.dim)).astype(np.float32)
    assert np.allclose([list(r.values()) for r in again.predict(x)],
                       [list(r.values()) for r in head.predict(x)], atol=1e-5)
    raw = json.loads(path.read_text())
    for broken, error in (({"w": raw["hidden"]["w"][:-1], "b": raw["hidden"]["b"]},
                           "hidden layer"),
                          ({"w": raw["hidden"]["w"], "b": raw["hidden"]["b"] + [0.0]},
                           "hidden layer")):
        path.write_text(json.dumps({**raw, "hidden": broken}))
        with pytest.raises(HeadError, match=error):
            load_head(path)
    path.write_text(json.dumps({**raw, "harm": {"w": raw["harm"]["w"][:-1], "b": 0.0}}))
    with pytest.raises(HeadError, match="harm weights"):
        load_head(path)


def test_the_same_bytes_give_the_head_parsed_before(tmp_path: Path) -> None:
    """A policy reload must not parse the head again: that one call holds the GIL for tens
    of milliseconds. Other bytes at the same path are read afresh."""
    path = tmp_path / "head.json"
    load_head().save(path)
    first = load_head(path)
    assert load_head(path) is first
    assert not first.cat_w.flags.writeable  # shared between pipelines: nobody may change it
    with pytest.raises(ValueError, match="read-only"):
        first.harm_w[0] = 1.0
    raw = first.to_json()
    raw["harm"]["b"] = first.harm_b + 1.0
    path.write_bytes(orjson.dumps(raw))
    changed = load_head(path)
    assert changed is not first and changed.harm_b == pytest.approx(first.harm_b + 1.0)
    path.unlink()
    with pytest.raises(HeadError, match="cannot read"):
        load_head(path)
