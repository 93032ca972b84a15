"""The green list: vectorised path == reference, and it behaves like a fair keyed coin."""

from __future__ import annotations

import random

import pytest

from gateway.vllm_plugin.greenlist import (
    green_list,
    green_mask,
    key_seed,
    mix32,
    step_seed,
    threshold,
    vocab_hashes,
)

np = pytest.importorskip("numpy")  # numpy stands in for torch: same int64 operators

MASTER = b"m" * 32
GAMMA = 0.25


def test_mix32_is_identical_on_ints_and_int64_arrays() -> None:
    rng = random.Random(1)
    values = [rng.getrandbits(32) for _ in range(2000)] + [0, 1, 0xFFFFFFFF]
    vectorised = mix32(np.asarray(values, dtype=np.int64))
    assert vectorised.dtype == np.int64
    assert vectorised.tolist() == [mix32(v) for v in values]


def test_vectorised_green_lists_equal_the_reference() -> None:
    vocab = 3000
    hashed = vocab_hashes(np.arange(vocab, dtype=np.int64))
    rng = random.Random(2)
    seeds = [step_seed(key_seed(MASTER, f"{rng.getrandbits(64):016x}"), rng.randrange(vocab))
             for _ in range(12)]
    mask = green_mask(np.asarray(seeds, dtype=np.int64), hashed, threshold(GAMMA))
    assert mask.shape == (12, vocab)
    for row, seed in enumerate(seeds):
        assert set(np.flatnonzero(mask[row]).tolist()) == green_list(seed, vocab, GAMMA)


def test_each_list_holds_about_gamma_and_keys_are_independent() -> None:
    vocab = 50_000
    hashed = vocab_hashes(np.arange(vocab, dtype=np.int64))
    a = step_seed(key_seed(MASTER, "aaaa"), 17)
    b = step_seed(key_seed(MASTER, "bbbb"), 17)
    c = step_seed(key_seed(MASTER, "aaaa"), 18)
    masks = green_mask(np.asarray([a, b, c], dtype=np.int64), hashed, threshold(GAMMA))
    sd = (vocab * GAMMA * (1 - GAMMA)) ** 0.5
    for row in masks:
        assert abs(int(row.sum()) - vocab * GAMMA) < 5 * sd
    for x, y in ((0, 1), (0, 2)):  # another key, or another previous token
        overlap = int((masks[x] & masks[y]).sum())
        assert abs(overlap - vocab * GAMMA**2) < 5 * (vocab * GAMMA**2) ** 0.5


def test_seeds_depend_on_the_master_and_the_key() -> None:
    assert key_seed(MASTER, "k") != key_seed(b"n" * 32, "k")
    assert key_seed(MASTER, "k") != key_seed(MASTER, "l")
    assert 0 <= key_seed(MASTER, "k") < 2**32
    with pytest.raises(ValueError):
        threshold(1.0)
