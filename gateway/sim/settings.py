"""Simulator settings."""

from __future__ import annotations

from dataclasses import dataclass

VLLM_VERSION = "0.32.0"  # the vLLM release whose API the simulator follows


@dataclass(frozen=True, slots=True)
class SimSettings:
    """What the simulator serves and how fast. A request's `seed` overrides `seed`; fault
    directives override `ttft_s` and `tokens_per_second` per request.

    `guard_models` are served as Llama Guard 3 models (gateway.sim.guard): they answer
    `safe` or `unsafe\\nS1,...` about the text they are asked to judge, with vLLM's
    logprobs. A name in both tuples is a guard model."""

    models: tuple[str, ...] = ("sim-llama-3-8b-instruct",)
    ttft_s: float = 0.0  # delay before the first token
    tokens_per_second: float = 0.0  # 0: as fast as possible
    max_model_len: int = 8192
    seed: int = 0
    guard_models: tuple[str, ...] = ()
    # As vLLM's --api-key: every /v1 path needs `Authorization: Bearer <key>`.
    api_key: str | None = None

    @property
    def served(self) -> tuple[str, ...]:
        """Every model name served, in order, once each: `models`, then `guard_models`."""
        return tuple(dict.fromkeys((*self.models, *self.guard_models)))
