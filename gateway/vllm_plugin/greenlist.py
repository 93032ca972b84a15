"""The green list: which tokens a (key, previous token) pair favours.

Kirchenbauer et al. (2023), "A Watermark for Large Language Models", with the green list
defined by a keyed hash instead of a seeded permutation, so a whole batch is computed
at once with integer tensor ops:

    key_seed   = first 4 bytes of HMAC-SHA256(master, key id)        (per tenant key)
    step_seed  = mix32(key_seed ^ mix32(previous token))             (per position)
    green(t)   = mix32(step_seed ^ mix32(t)) < gamma * 2^32          (per vocabulary token)

so each token is green with probability gamma, independently of the others, under a
key nobody without the master can predict. mix32 is a 32-bit integer finaliser whose
intermediate values stay below 2^63, so Python ints, numpy int64 and torch int64 give
bit-identical results (and the right shifts only ever see non-negative values).

`green_mask` is written with operators only, so the same function serves numpy arrays
(tests, CPU detection) and torch tensors (the vLLM processor).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, TypeVar

M32 = 0xFFFFFFFF
_MUL = 0x045D9F3B  # < 2^27: a 32-bit value times this stays below 2^59

T = TypeVar("T")


def mix32(x: T) -> T:
    """A 32-bit avalanche hash; works on int, numpy int64 arrays and torch int64 tensors."""
    y: Any = x
    y = ((y >> 16) ^ y) * _MUL & M32
    y = ((y >> 16) ^ y) * _MUL & M32
    result: T = (y >> 16) ^ y
    return result


def key_seed(master: bytes, key_id: str) -> int:
    return int.from_bytes(hmac.new(master, key_id.encode(), hashlib.sha256).digest()[:4], "big")


def step_seed(seed: int, previous_token: int) -> int:
    return int(mix32(seed ^ mix32(previous_token & M32)))


def threshold(gamma: float) -> int:
    if not 0.0 < gamma < 1.0:
        raise ValueError("gamma must be between 0 and 1")
    return int(gamma * (1 << 32))


# -- the reference: one token at a time, plain Python ---------------------------------

def is_green(step: int, token: int, gamma: float) -> bool:
    return int(mix32(step ^ mix32(token & M32))) < threshold(gamma)


def green_list(step: int, vocab_size: int, gamma: float) -> set[int]:
    return {t for t in range(vocab_size) if is_green(step, t, gamma)}


# -- the vectorised path: numpy or torch ------------------------------------------------

def vocab_hashes(arange: T) -> T:
    """mix32 of every token id; `arange` is an int64 array/tensor of token ids."""
    return mix32(arange)


def green_mask(step_seeds: Any, hashed_vocab: Any, limit: int) -> Any:
    """Boolean [rows, vocab]: green tokens for each row's step seed (int64 [rows])."""
    return mix32(step_seeds[:, None] ^ hashed_vocab[None, :]) < limit
