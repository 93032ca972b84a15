"""Detecting the statistical watermark in a token sequence, across candidate keys.

For one key: score every position after the first (its green list depends on the
previous token), counting each (previous, token) pair once (repeated n-grams are not
independent evidence), then test H0 "tokens are green with probability gamma":

    z = (G - gamma*T) / sqrt(T*gamma*(1-gamma)),   p = P(Binomial(T, gamma) >= G)

(exact tail, not the normal approximation). Over N candidate keys the smallest p-value
is compared with alpha/N (Bonferroni), so the chance that *any* key fires on text that
carries no watermark stays below alpha whatever N is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.vllm_plugin.greenlist import is_green, step_seed

DEFAULT_GAMMA = 0.25
DEFAULT_ALPHA = 1e-3
MIN_SCORED = 16


@dataclass(frozen=True, slots=True)
class KeyScore:
    key_id: str
    scored: int
    green: int
    z: float
    p_value: float
    p_adjusted: float


@dataclass(frozen=True, slots=True)
class TokenDetection:
    watermarked: bool
    best: KeyScore | None
    scores: tuple[KeyScore, ...]
    alpha: float


def count_green(tokens: Sequence[int], seed: int, gamma: float,
                ignore_repeated: bool = True) -> tuple[int, int]:
    """(scored positions, green positions) for one key seed."""
    seen: set[tuple[int, int]] = set()
    scored = green = 0
    for prev, tok in itertools.pairwise(tokens):
        if ignore_repeated:
            if (prev, tok) in seen:
                continue
            seen.add((prev, tok))
        scored += 1
        green += is_green(step_seed(seed, prev), tok, gamma)
    return scored, green


def z_score(scored: int, green: int, gamma: float) -> float:
    if scored == 0:
        return 0.0
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))


def binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space from the first term."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_term = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                + k * math.log(p) + (n - k) * math.log1p(-p))
    term, total, ratio = math.exp(log_term), 0.0, p / (1 - p)
    for i in range(k, n + 1):
        total += term
        if term < total * 1e-17:
            break
        term *= (n - i) / (i + 1) * ratio
    return min(1.0, total)


def detect_tokens(tokens: Sequence[int], candidates: Mapping[str, int],
                  gamma: float = DEFAULT_GAMMA, alpha: float = DEFAULT_ALPHA,
                  min_scored: int = MIN_SCORED) -> TokenDetection:
    """Test the sequence against each candidate key (key id -> key seed)."""
    n = max(1, len(candidates))
    scores = []
    for kid, seed in candidates.items():
        scored, green = count_green(tokens, seed, gamma)
        p = binomial_tail(scored, green, gamma) if scored else 1.0
        scores.append(KeyScore(kid, scored, green, z_score(scored, green, gamma), p,
                               min(1.0, p * n)))
    scores.sort(key=lambda s: s.p_value)
    best = scores[0] if scores else None
    fired = best is not None and best.scored >= min_scored and best.p_adjusted < alpha
    return TokenDetection(fired, best, tuple(scores), alpha)
