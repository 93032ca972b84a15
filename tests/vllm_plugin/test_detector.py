"""The detector on synthetic token sequences: separation, calibration, Bonferroni."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from gateway.vllm_plugin.detector import binomial_tail, count_green, detect_tokens, z_score
from gateway.vllm_plugin.greenlist import (
    green_mask,
    key_seed,
    step_seed,
    threshold,
    vocab_hashes,
)

np = pytest.importorskip("numpy")

MASTER = b"d" * 32
VOCAB = 1000
GAMMA = 0.25


def generate(kid: str | None, n: int, seed: int, delta: float = 2.0) -> list[int]:
    """Sample n tokens from a random 'model', biased to the key's green lists if given."""
    rng = np.random.default_rng(seed)
    hashed = vocab_hashes(np.arange(VOCAB, dtype=np.int64))
    tokens = [int(rng.integers(VOCAB))]
    for _ in range(n - 1):
        logits = rng.normal(0.0, 2.0, VOCAB)
        if kid is not None:
            s = step_seed(key_seed(MASTER, kid), tokens[-1])
            logits += delta * green_mask(np.asarray([s], dtype=np.int64), hashed,
                                         threshold(GAMMA))[0]
        p = np.exp(logits - logits.max())
        tokens.append(int(rng.choice(VOCAB, p=p / p.sum())))
    return tokens


def candidates(n: int) -> dict[str, int]:
    return {f"{i:04x}": key_seed(MASTER, f"{i:04x}") for i in range(n)}


def test_binomial_tail_matches_brute_force() -> None:
    for n, k, p in ((10, 3, 0.25), (40, 20, 0.25), (7, 0, 0.5), (5, 6, 0.3), (30, 30, 0.1)):
        brute = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert binomial_tail(n, k, p) == pytest.approx(brute, rel=1e-9, abs=1e-300)


def test_watermarked_text_is_found_and_attributed_to_its_key() -> None:
    keys = candidates(20)
    for trial, kid in enumerate(("0003", "0011")):
        tokens = generate(kid, 200, seed=trial)
        result = detect_tokens(tokens, keys, GAMMA)
        assert result.watermarked
        assert result.best is not None and result.best.key_id == kid
        assert result.best.z > 6
        others = [s.z for s in result.scores if s.key_id != kid]
        assert max(others) < 4


def test_unwatermarked_z_scores_look_standard_normal() -> None:
    seed = key_seed(MASTER, "0001")
    zs = []
    for trial in range(80):
        tokens = generate(None, 100, seed=1000 + trial)
        zs.append(z_score(*count_green(tokens, seed, GAMMA), GAMMA))
    assert abs(statistics.mean(zs)) < 0.3
    assert 0.75 < statistics.stdev(zs) < 1.25


def test_bonferroni_keeps_the_family_wise_error_under_alpha() -> None:
    keys = candidates(10)
    alpha = 0.05
    rng = random.Random(5)
    fired = uncorrected = 0
    trials = 300
    for _ in range(trials):
        tokens = [rng.randrange(VOCAB) for _ in range(60)]
        result = detect_tokens(tokens, keys, GAMMA, alpha=alpha)
        fired += result.watermarked
        uncorrected += any(s.p_value < alpha for s in result.scores)
    sd = math.sqrt(alpha * (1 - alpha) / trials)
    assert fired / trials <= alpha + 3 * sd
    assert uncorrected / trials > 2 * alpha  # without the correction, far more false alarms


def test_too_few_tokens_never_fire() -> None:
    tokens = generate("0003", 12, seed=1, delta=8.0)
    assert not detect_tokens(tokens, candidates(3), GAMMA).watermarked
