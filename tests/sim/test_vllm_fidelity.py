"""The simulator answers as real vLLM answered: tests/sim/vllm_recorded.json holds what
vLLM 0.32 (on tiny_model.py's checkpoint) said to tests/sim/vllm_requests.PROBES, and the
simulator must give the same status, content type and shape (every key, every value's
type; not the text) for each. `make vllm-check` makes a new recording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL, Server
from tests.sim.vllm_requests import PROBES, record

RECORDED = json.loads((Path(__file__).parent / "vllm_recorded.json").read_text())
# Where the simulator differs on purpose, and why.
ALLOWED = {
    # The simulator serves embeddings for every model (it stands in for an embedding model
    # beside the chat model); vLLM serves them only for a pooling model.
    "err_embeddings_on_generator": "embeddings",
}


def shape(value: Any, key: str = "") -> Any:
    """Keys and value types, not values. Completions' top_logprobs dicts are keyed by the
    tokens themselves, so only their value type counts."""
    if isinstance(value, dict):
        if key == "top_logprobs[]":
            return {"<token>": sorted({type(v).__name__ for v in value.values()})}
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0], key + "[]")] if value else []
    return type(value).__name__


def differences(sim: Any, real: Any, path: str = "") -> list[str]:
    if isinstance(sim, dict) and isinstance(real, dict):
        out = [f"{path}.{k}: only in vLLM" for k in real if k not in sim]
        out += [f"{path}.{k}: only in the simulator" for k in sim if k not in real]
        for k in sim.keys() & real.keys():
            if path.endswith(".error") and k == "param":
                continue  # which field vLLM names differs between its validators
            out += differences(sim[k], real[k], f"{path}.{k}")
        return out
    if isinstance(sim, list) and isinstance(real, list):
        return differences(sim[0], real[0], path + "[0]") if sim and real else []
    return [] if sim == real else [f"{path}: simulator {sim}, vLLM {real}"]


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return dict(RECORDED["probes"])


def _compare(name: str, sim: dict[str, Any], real: dict[str, Any]) -> list[str]:
    out = []
    if sim["status"] != real["status"]:
        out.append(f"status: simulator {sim['status']}, vLLM {real['status']}")
    if sim["content_type"].split(";")[0] != real["content_type"].split(";")[0]:
        out.append(f"content type: simulator {sim['content_type']}, vLLM "
                   f"{real['content_type']}")
    if "json" in real and "json" in sim:
        out += differences(shape(sim["json"]), shape(real["json"]))
    if "events" in real and "events" in sim:
        mine, theirs = sim["events"], real["events"]
        if (mine[-1], theirs[-1]) != ("[DONE]", "[DONE]"):
            out.append("a stream does not end with [DONE]")
        # The opening events, and the closing ones (the usage chunk, if asked for).
        for label, a, b in (("first", mine[0], theirs[0]), ("second", mine[1], theirs[1]),
                            ("last", mine[-2], theirs[-2]), ("before last", mine[-3],
                                                             theirs[-3])):
            out += [f"{label} event{d}" for d in differences(shape(a), shape(b))]
        if sim["raw_head"][:7] != real["raw_head"][:7]:
            out.append("stream framing differs")
    return [f"{name}: {line}" for line in out]


def test_the_recording_is_real_vllm_and_covers_every_probe(recorded: dict[str, Any]) -> None:
    assert RECORDED["version"].startswith("0.32")
    assert set(recorded) == {p.name for p in PROBES}


async def test_the_simulator_answers_as_vllm_did(sim: Server,
                                                  recorded: dict[str, Any]) -> None:
    answered = await record(sim.url, MODEL)
    found = [line for p in PROBES if p.name not in ALLOWED
             for line in _compare(p.name, answered["probes"][p.name], recorded[p.name])]
    assert found == []
    # Every metric the simulator exports is one vLLM exports, under the same name.
    assert answered["metric_families"]
    assert set(answered["metric_families"]) <= set(RECORDED["metric_families"])
