"""The logits processor's batch bookkeeping and biasing, with numpy standing in for torch.

What runs here: the processor's state handling (added, removed, moved and swapped
requests, live output lists) and its vectorised biasing. What cannot run without vLLM
and a GPU: vLLM actually loading the class and torch executing the same operators.
"""

from __future__ import annotations

import abc
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest

from gateway.vllm_plugin import processor
from gateway.vllm_plugin.greenlist import green_list, key_seed, step_seed
from gateway.vllm_plugin.processor import GreenListCore, NumpyOps, validate_key_id

np = pytest.importorskip("numpy")

MASTER = b"k" * 32
VOCAB = 400
DELTA = 2.0


class Direction(Enum):
    UNIDIRECTIONAL = 1
    SWAP = 2


@dataclass
class Params:
    extra_args: dict[str, Any] | None = None


@dataclass
class Update:
    batch_size: int
    removed: list[int] = field(default_factory=list)
    added: list[tuple[Any, ...]] = field(default_factory=list)
    moved: list[tuple[int, int, Direction]] = field(default_factory=list)


def core() -> GreenListCore:
    return GreenListCore(MASTER, NumpyOps(), gamma=0.25, delta=DELTA)


def expected_row(kid: str, prev: int) -> Any:
    row = np.zeros(VOCAB, dtype=np.float32)
    row[sorted(green_list(step_seed(key_seed(MASTER, kid), prev), VOCAB, 0.25))] = DELTA
    return row


def test_rows_with_a_key_get_their_green_list_and_others_are_untouched() -> None:
    proc = core()
    out_a: list[int] = [5, 9]
    proc.update_state(Update(3, added=[
        (0, Params({"gateway_key_id": "00aa"}), [1, 2, 3], out_a),
        (1, Params(None), [4], []),
        (2, Params({"gateway_key_id": "00bb"}), [7, 8], []),  # no output yet: prompt's last
    ]))
    logits = proc.apply(np.zeros((3, VOCAB), dtype=np.float32))
    assert np.array_equal(logits[0], expected_row("00aa", 9))
    assert not logits[1].any()
    assert np.array_equal(logits[2], expected_row("00bb", 8))
    out_a.append(123)  # vLLM appends to the live list; the next step follows it
    proc.update_state(None)
    logits = proc.apply(np.zeros((3, VOCAB), dtype=np.float32))
    assert np.array_equal(logits[0], expected_row("00aa", 123))


def test_removed_moved_and_swapped_rows_follow_their_requests() -> None:
    proc = core()
    proc.update_state(Update(3, added=[
        (0, Params({"gateway_key_id": "0a"}), [1], []),
        (1, Params({"gateway_key_id": "0b"}), [2], []),
        (2, Params({"gateway_key_id": "0c"}), [3], []),
    ]))
    proc.update_state(Update(2, removed=[1], moved=[(2, 1, Direction.UNIDIRECTIONAL)]))
    logits = proc.apply(np.zeros((3, VOCAB), dtype=np.float32))
    assert np.array_equal(logits[0], expected_row("0a", 1))
    assert np.array_equal(logits[1], expected_row("0c", 3))
    assert not logits[2].any()
    proc.update_state(Update(2, moved=[(0, 1, Direction.SWAP)]))
    logits = proc.apply(np.zeros((2, VOCAB), dtype=np.float32))
    assert np.array_equal(logits[0], expected_row("0c", 3))
    assert np.array_equal(logits[1], expected_row("0a", 1))
    # an older vLLM's 3-tuples (no prompt ids) replace what sat at that index
    proc.update_state(Update(2, added=[(0, Params(None), [])]))
    assert not proc.apply(np.zeros((2, VOCAB), dtype=np.float32))[0].any()


def test_many_rows_are_hashed_in_blocks() -> None:
    proc = core()
    rows = 2 * processor.ROW_BLOCK + 3
    proc.update_state(Update(rows, added=[
        (i, Params({"gateway_key_id": f"{i:04x}"}), [i], []) for i in range(rows)]))
    logits = proc.apply(np.zeros((rows, VOCAB), dtype=np.float32))
    for i in (0, processor.ROW_BLOCK, rows - 1):
        assert np.array_equal(logits[i], expected_row(f"{i:04x}", i))
    assert not proc.is_argmax_invariant()


@pytest.mark.parametrize("args", [{"gateway_key_id": "XYZ"}, {"gateway_key_id": 5},
                                  {"gateway_key_id": "a" * 65}])
def test_bad_key_ids_are_refused(args: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        validate_key_id(args)
    assert validate_key_id({"other": 1}) is None and validate_key_id(None) is None


def test_a_short_master_key_is_refused() -> None:
    with pytest.raises(ValueError):
        GreenListCore(b"short", NumpyOps())


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM installed")
def test_the_package_imports_without_vllm_and_builds_on_its_base(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModuleNotFoundError):
        _ = processor.GreenListLogitsProcessor
    processor.processor_class.cache_clear()

    class LogitsProcessor(abc.ABC):  # the shape of vLLM's interface
        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            return None

        @abc.abstractmethod
        def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None: ...

        @abc.abstractmethod
        def apply(self, logits: Any) -> Any: ...

        @abc.abstractmethod
        def is_argmax_invariant(self) -> bool: ...

        @abc.abstractmethod
        def update_state(self, batch_update: Any) -> None: ...

    fake = types.ModuleType("vllm.v1.sample.logits_processor")
    fake.LogitsProcessor = LogitsProcessor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.logits_processor", fake)
    monkeypatch.setattr(processor, "TorchOps", lambda device: NumpyOps())
    monkeypatch.setenv(processor.MASTER_ENV, MASTER.decode())
    try:
        cls = processor.GreenListLogitsProcessor
        assert issubclass(cls, LogitsProcessor)
        proc = cls(object(), "cpu", False)
        proc.update_state(Update(1, added=[(0, Params({"gateway_key_id": "0a"}), [1], [])]))
        assert np.array_equal(proc.apply(np.zeros((1, VOCAB), dtype=np.float32))[0],
                              expected_row("0a", 1))
        with pytest.raises(ValueError):
            cls.validate_params(Params({"gateway_key_id": "nope"}))
        monkeypatch.delenv(processor.MASTER_ENV)
        with pytest.raises(RuntimeError):
            cls(object(), "cpu", False)
    finally:
        processor.processor_class.cache_clear()
