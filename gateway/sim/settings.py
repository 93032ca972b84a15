"""Simulator settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SimSettings:
    """What the simulator serves and how fast. A request's `seed` overrides `seed`; fault
    directives override `ttft_s` and `tokens_per_second` per request."""

    models: tuple[str, ...] = ("sim-llama-3-8b-instruct",)
    ttft_s: float = 0.0  # delay before the first token
    tokens_per_second: float = 0.0  # 0: as fast as possible
    max_model_len: int = 8192
    seed: int = 0
