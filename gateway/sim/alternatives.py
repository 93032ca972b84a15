"""Logprobs for the simulator's ordinary models: each generated token with a made-up but
deterministic log-probability, ranked first, and common tokens below it as alternatives
(enough for vLLM's 20 top logprobs). Guard models say theirs instead (guard.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from gateway.sim.guard import EOS_TOKEN, Top

ALTERNATIVES = (" the", ",", ".", " a", " and", " of", " to", " in", " is", " that", " it",
                " for", " with", " as", " was", " on", "\n", " be", " by", " this", " are")


def plain_tops(tokens: Sequence[str], seed: int) -> tuple[Top, ...]:
    """Each token's logprobs: itself (between -3.05 and -0.05), then the alternatives
    0.5, 0.75, ... below it. `tokens` are the tokens' own texts, "" for EOS."""
    out = []
    for i, text in enumerate(tokens):
        token = text or EOS_TOKEN
        digest = hashlib.blake2b(f"{seed}:{i}:{token}".encode(), digest_size=4).digest()
        chosen = -0.05 - 3.0 * int.from_bytes(digest, "big") / 2**32
        others = [t for t in ALTERNATIVES if t != token][:20]
        ranked = [(token, chosen)] + [(t, chosen - 0.5 - 0.25 * r) for r, t in enumerate(others)]
        out.append(((token, chosen), *ranked))
    return tuple(out)
