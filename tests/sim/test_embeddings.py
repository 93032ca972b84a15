"""Deterministic unit vectors, as floats or base64."""

from __future__ import annotations

import base64
import math
import struct

import aiohttp
import pytest

from gateway.sim.embeddings import DIMENSIONS, vector
from tests.conftest import MODEL, Server


def test_vectors_are_deterministic_unit_vectors() -> None:
    a, b = vector("a"), vector("b")
    assert len(a) == DIMENSIONS and a == vector("a") and a != b
    assert math.isclose(sum(v * v for v in a), 1.0)
    short = vector("a", 8)
    assert len(short) == 8 and math.isclose(sum(v * v for v in short), 1.0)


async def test_embeddings_endpoint(sim: Server, session: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "input": ["a", "two words"]}
    async with session.post(sim.url + "/v1/embeddings", json=body) as resp:
        floats = await resp.json()
    assert floats["object"] == "list" and floats["model"] == MODEL
    assert floats["id"].startswith("embd-")
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["data"][0]["embedding"] == pytest.approx(vector("a"))
    assert floats["usage"]["prompt_tokens"] == floats["usage"]["total_tokens"] == 3
    async with session.post(sim.url + "/v1/embeddings",
                            json={**body, "encoding_format": "base64"}) as resp:
        packed = (await resp.json())["data"][1]["embedding"]
    raw = base64.b64decode(packed)
    unpacked = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert unpacked == pytest.approx(floats["data"][1]["embedding"], abs=1e-6)


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "nope", "input": "a"}, 404),
    ({"model": MODEL}, 400),
    ({"model": MODEL, "input": []}, 400),
    ({"model": MODEL, "input": "a", "dimensions": 385}, 400),
    ({"model": MODEL, "input": "a", "encoding_format": "hex"}, 400),
])
async def test_embedding_refusals(sim: Server, session: aiohttp.ClientSession,
                                  body: dict[str, object], status: int) -> None:
    async with session.post(sim.url + "/v1/embeddings", json=body) as resp:
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == status
