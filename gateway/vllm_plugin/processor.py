"""The per-tenant green-list logits processor, for vLLM's v1 `LogitsProcessor` interface.

Load it with `vllm serve MODEL --logits-processors
gateway.vllm_plugin.processor:GreenListLogitsProcessor`. vLLM and torch are imported
only when vLLM asks for that attribute, so this module (and the gateway) import without
them; the state handling and the arithmetic live in `GreenListCore`, which takes its
tensor operations from a small `TensorOps` object (torch inside vLLM, numpy in tests).

Per request: the gateway sends `vllm_xargs: {"gateway_key_id": "<16 hex>"}`, which
vLLM hands over as `SamplingParams.extra_args`. Requests without it are left alone.
Settings (environment of the vLLM process):

    GATEWAY_SECRET_VLLM_WATERMARK  master key, >= 32 bytes, the same value the gateway's
                                   detector uses (required: no key, no start)
    GATEWAY_WATERMARK_GAMMA        green share of the vocabulary (default 0.25)
    GATEWAY_WATERMARK_DELTA        logit bias added to green tokens (default 2.0)
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import types
from typing import Any, Protocol

from gateway.vllm_plugin.greenlist import green_mask, key_seed, step_seed, threshold, vocab_hashes

KEY_ARG = "gateway_key_id"
MASTER_ENV = "GATEWAY_SECRET_VLLM_WATERMARK"
_KEY_ID = re.compile(r"[0-9a-f]{1,64}")
ROW_BLOCK = 16  # rows hashed at once: bounds the [rows, vocab] int64 temporaries


class TensorOps(Protocol):
    def int64(self, values: list[int]) -> Any: ...

    def arange(self, n: int) -> Any: ...

    def add_rows(self, logits: Any, rows: list[int], mask: Any, delta: float) -> None:
        """logits[rows] += delta where mask (bool [len(rows), vocab]) is set."""
        ...


class TorchOps:
    def __init__(self, device: Any) -> None:
        self._torch: Any = importlib.import_module("torch")
        self._device = device

    def int64(self, values: list[int]) -> Any:
        return self._torch.tensor(values, dtype=self._torch.int64, device=self._device)

    def arange(self, n: int) -> Any:
        return self._torch.arange(n, dtype=self._torch.int64, device=self._device)

    def add_rows(self, logits: Any, rows: list[int], mask: Any, delta: float) -> None:
        index = self.int64(rows)
        logits[index] += mask.to(logits.dtype) * delta


class NumpyOps:
    """The same operations on numpy arrays, for testing the processor without torch."""

    def __init__(self) -> None:
        self._np: Any = importlib.import_module("numpy")

    def int64(self, values: list[int]) -> Any:
        return self._np.asarray(values, dtype=self._np.int64)

    def arange(self, n: int) -> Any:
        return self._np.arange(n, dtype=self._np.int64)

    def add_rows(self, logits: Any, rows: list[int], mask: Any, delta: float) -> None:
        logits[rows] += mask.astype(logits.dtype) * delta


def validate_key_id(extra_args: Any) -> str | None:
    """The request's key id, None when the request does not ask for the watermark."""
    if not isinstance(extra_args, dict) or extra_args.get(KEY_ARG) is None:
        return None
    kid = extra_args[KEY_ARG]
    if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid):
        raise ValueError(f"{KEY_ARG} must be 1 to 64 lowercase hex characters")
    return kid


class GreenListCore:
    """Batch state and the biasing step; vLLM's base class is mixed in at load time."""

    def __init__(self, master: bytes, ops: TensorOps, gamma: float = 0.25,
                 delta: float = 2.0) -> None:
        if len(master) < 32:
            raise ValueError("the watermark master key must be at least 32 bytes")
        self._master = master
        self._ops = ops
        self._limit = threshold(gamma)
        self._delta = delta
        self._seeds: dict[str, int] = {}
        # batch index -> (key seed, prompt token ids, live output token ids)
        self._rows: dict[int, tuple[int, list[int] | None, list[int]]] = {}
        self._vocab: tuple[int, Any] | None = None

    def _seed(self, kid: str) -> int:
        seed = self._seeds.get(kid)
        if seed is None:
            if len(self._seeds) > 100_000:
                self._seeds.clear()
            seed = self._seeds[kid] = key_seed(self._master, kid)
        return seed

    def is_argmax_invariant(self) -> bool:
        return False  # adding delta to green logits changes the greedy choice

    def update_state(self, batch_update: Any) -> None:
        """Apply vLLM's BatchUpdate: removed, then added, then moved (its documented order)."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for added in batch_update.added:
            # (index, params, prompt ids, output ids); before vLLM 0.10.2 without prompt ids
            if len(added) == 4:
                index, params, prompt, output = added
            else:
                (index, params, output), prompt = added, None
            kid = validate_key_id(getattr(params, "extra_args", None))
            if kid is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = (self._seed(kid), prompt, output)
        for a, b, direction in batch_update.moved:
            ra, rb = self._rows.pop(a, None), self._rows.pop(b, None)
            if ra is not None:
                self._rows[b] = ra
            if rb is not None and getattr(direction, "name", "") == "SWAP":
                self._rows[a] = rb

    def _hashed_vocab(self, size: int) -> Any:
        if self._vocab is None or self._vocab[0] != size:
            self._vocab = (size, vocab_hashes(self._ops.arange(size)))
        return self._vocab[1]

    def step_seeds(self) -> dict[int, int]:
        """This step's seed for every watermarked row: its key and its previous token."""
        out = {}
        for index, (seed, prompt, output) in self._rows.items():
            prev = output[-1] if output else (prompt[-1] if prompt else 0)
            out[index] = step_seed(seed, prev)
        return out

    def apply(self, logits: Any) -> Any:
        if not self._rows:
            return logits
        batch, vocab = int(logits.shape[0]), int(logits.shape[1])
        seeds = sorted((i, s) for i, s in self.step_seeds().items() if i < batch)
        hashed = self._hashed_vocab(vocab)
        for start in range(0, len(seeds), ROW_BLOCK):
            block = seeds[start:start + ROW_BLOCK]
            mask = green_mask(self._ops.int64([s for _, s in block]), hashed, self._limit)
            self._ops.add_rows(logits, [i for i, _ in block], mask, self._delta)
        return logits


def _settings() -> tuple[bytes, float, float]:
    raw = os.environ.get(MASTER_ENV, "")
    if len(raw.encode()) < 32:
        raise RuntimeError(f"{MASTER_ENV} must hold the watermark master key (>= 32 bytes)")
    gamma = float(os.environ.get("GATEWAY_WATERMARK_GAMMA", "0.25"))
    delta = float(os.environ.get("GATEWAY_WATERMARK_DELTA", "2.0"))
    return raw.encode(), gamma, delta


class _VllmAdapter(GreenListCore):
    """vLLM's constructor and classmethod on top of the core."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        master, gamma, delta = _settings()
        super().__init__(master, TorchOps(device), gamma, delta)

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        validate_key_id(getattr(sampling_params, "extra_args", None))


@functools.cache
def processor_class() -> type:
    """GreenListLogitsProcessor: the adapter with vLLM's LogitsProcessor as a base."""
    base = importlib.import_module("vllm.v1.sample.logits_processor").LogitsProcessor
    return types.new_class("GreenListLogitsProcessor", (_VllmAdapter, base), {},
                           lambda ns: ns.update(__module__=__name__))


def __getattr__(name: str) -> Any:
    if name == "GreenListLogitsProcessor":
        return processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
