"""The encoder's LoRA updates: trained with the harm model, merged once, read as trained."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy", reason="the embedding head needs numpy (the `ml` extra)")

from gateway.pipeline.classify.embedding import Embedder, Encoder  # noqa: E402
from gateway.pipeline.classify.head import Adapter, HeadError, load_head  # noqa: E402

LAYERS = (2, 3, 4)
TEXTS = ["how do I bake sourdough bread", "write ransomware that encrypts a hospital's files",
         "hello there, how are you today? " * 3]


@pytest.fixture(scope="module")
def encoder(embedder: Embedder) -> Iterator[Encoder]:
    """A second Encoder beside the shared Embedder's (the embedder fixture skips or fails
    without the `ml` extra)."""
    yield Encoder(1)


def _random_adapter(encoder: Encoder, rank: int = 4, seed: int = 1) -> tuple[Adapter, Any]:
    """An adapter with non-zero updates, and the unmerged low-rank model it came from."""
    import torch

    from gateway.pipeline.classify.adapt import _wrap

    torch.manual_seed(seed)
    model = copy.deepcopy(encoder.model)
    model.encoder.layer = copy.deepcopy(encoder.blocks[:max(LAYERS)])
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = _wrap(model, rank, 2.0, torch)
    with torch.no_grad():
        for m in wrapped:
            m.b.normal_(0.0, 0.02)
    updates = {f"encoder.layer.{m.index}.{m.path}": (m.a.detach().numpy().copy(),
                                                     m.b.detach().numpy().copy())
               for m in wrapped}
    return Adapter(2.0, updates), model.eval()


def test_merged_updates_read_what_the_low_rank_layers_read(encoder: Encoder) -> None:
    import torch

    from gateway.pipeline.classify.embedding import padded, pooled_module

    before = encoder.encode(TEXTS, 128, LAYERS)
    adapter, unmerged = _random_adapter(encoder)
    pooled = pooled_module(unmerged, LAYERS, torch)
    with torch.no_grad():
        expected = np.concatenate(
            [pooled(*map(torch.from_numpy, padded([encoder.ids(t, 128)]))).numpy()
             for t in TEXTS])
    merged = encoder.encode(TEXTS, 128, LAYERS, adapter)
    assert np.abs(merged - expected).max() < 1e-5
    assert np.abs(merged - before).max() > 1e-3  # the updates changed what is read
    # The model itself stays as shipped for heads without the adapter.
    assert np.array_equal(encoder.encode(TEXTS, 128, LAYERS), before)


def test_fine_tuning_separates_its_examples_and_is_repeatable(encoder: Encoder) -> None:
    from gateway.pipeline.classify.adapt import fine_tune

    harmful = ["write malware that steals saved passwords", "how do I poison my neighbour",
               "make a pipe bomb from hardware store parts", "help me stalk my ex"]
    benign = ["write a poem about autumn leaves", "how do I repot a cactus",
              "explain photosynthesis simply", "recommend a sci-fi novel"]
    texts, labels = harmful + benign, [True] * 4 + [False] * 4
    tuned = fine_tune(encoder, texts, labels, LAYERS, rank=4, epochs=12, hidden=16, batch=4,
                      threads=1)
    again = fine_tune(encoder, texts, labels, LAYERS, rank=4, epochs=12, hidden=16, batch=4,
                      threads=1)
    assert tuned.adapter.digest == again.adapter.digest  # seeded: the same updates
    assert set(tuned.adapter.updates) == {
        f"encoder.layer.{i}.{p}" for i in range(max(LAYERS))
        for p in ("attention.self.query", "attention.self.value", "intermediate.dense",
                  "output.dense")}
    x = encoder.encode(texts, 128, LAYERS, tuned.adapter)
    hidden = np.maximum(x @ tuned.hidden_w.T + tuned.hidden_b, 0.0)
    logits = hidden @ tuned.harm_w + tuned.harm_b
    assert logits[:4].min() > logits[4:].max()


def test_only_the_latest_adapted_traces_are_kept(encoder: Encoder,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each adapted trace holds its own copy of the weights: a policy reloaded with one new
    head after another must not grow the process."""
    from collections import OrderedDict

    from gateway.pipeline.classify import embedding

    monkeypatch.setattr(embedding, "_TRACED", OrderedDict())
    adapters = [_random_adapter(encoder, rank=1, seed=10 + i)[0] for i in range(5)]
    for adapter in adapters:
        encoder.encode(TEXTS[:1], 128, LAYERS, adapter)
    encoder.encode(TEXTS[:1], 128, LAYERS)
    kept = [digest for _, digest, _ in embedding._TRACED]
    assert kept.count("") == 1  # the unadapted trace is never dropped for them
    assert [d for d in kept if d] == [a.digest for a in adapters[-embedding._ADAPTED_KEPT:]]


def test_an_adapted_head_is_read_through_its_adapter(encoder: Encoder,
                                                     embedder: Embedder) -> None:
    adapter, _ = _random_adapter(encoder, seed=3)
    plain = asyncio.run(_embed(embedder, None))
    adapted = asyncio.run(_embed(embedder, adapter))
    # Not the cached vector of the unadapted reading, and what the Encoder reads.
    assert np.abs(adapted - plain).max() > 1e-3
    assert np.allclose(adapted, encoder.encode(TEXTS[:1], 128, LAYERS, adapter), atol=1e-5)


async def _embed(embedder: Embedder, adapter: Adapter | None) -> Any:
    return await embedder.embed(TEXTS[:1], 128, LAYERS, adapter)


def test_the_adapter_round_trips_and_is_checked(encoder: Encoder, tmp_path: Path) -> None:
    import json
    from dataclasses import replace

    adapter, _ = _random_adapter(encoder, rank=2)
    head = replace(load_head(), adapter=adapter)
    path = tmp_path / "head.json"
    head.save(path)
    again = load_head(path)
    assert again.adapter is not None and set(again.adapter.updates) == set(adapter.updates)
    merged = encoder.encode(TEXTS, 128, LAYERS, again.adapter)
    assert np.abs(merged - encoder.encode(TEXTS, 128, LAYERS, adapter)).max() < 1e-4
    raw = json.loads(path.read_text())
    name = "encoder.layer.0.attention.self.query"
    update = raw["adapter"]["updates"][name]
    for updates, error in (
            ({"encoder.layer.3.attention.self.key_": update}, "not a linear layer"),
            ({"encoder.layer.4.attention.self.query": update}, "not a linear layer"),
            ({name: {"a": update["a"], "b": update["b"][:-1]}}, "needs A"),
            ({name: {"a": update["a"][:1], "b": update["b"]}}, "needs A"),
            ({name: {"a": update["a"]}}, "malformed adapter"),
            ({}, "needs a finite scale")):
        path.write_text(json.dumps({**raw, "adapter": {"scale": 2.0, "updates": updates}}))
        with pytest.raises(HeadError, match=error):
            load_head(path)
