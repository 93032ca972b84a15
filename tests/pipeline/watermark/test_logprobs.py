"""Logprobs spell the answer as generated: beside a watermarked answer they would hand the
caller an unmarked copy, so the gateway withholds them wherever the payload is embedded
(here a tier that output moderation does not cover, so the payload is the only filter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.pipeline.watermark.payload import extract_payloads, strip_marks
from tests.conftest import MODEL, MintToken, StartGateway, StartSim, edited_policies

PROSE = "[[sim:prose=all]] Tell me about rivers."


@pytest.fixture
async def url(start_gateway: StartGateway, start_sim: StartSim, tmp_path: Path) -> str:
    sim = await start_sim()
    policies = edited_policies(
        tmp_path,
        ("  moderation:\n    enabled: true\n", "  moderation:\n    enabled: true\n"
                                               "    tiers: [public]\n"))
    return (await start_gateway(sim.url, policies=policies)).url


headers_seen: list[str | None] = []  # each answer's x-gateway-logprobs header, in order


async def _post(url: str, token: str, body: dict[str, Any]) -> bytes:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as h, \
            h.post(url + body.pop("path"), json={"model": MODEL, **body}) as resp:
        assert resp.status == 200, await resp.text()
        headers_seen.append(resp.headers.get("x-gateway-logprobs"))
        return await resp.read()


@pytest.mark.parametrize("tier", ["verified", "trusted"])  # payload on, payload off
async def test_logprobs_are_withheld_beside_a_watermarked_answer(
        url: str, mint: MintToken, tier: str) -> None:
    token = mint(tier=tier)
    headers_seen.clear()
    chat = orjson.loads(await _post(url, token, {
        "path": "/v1/chat/completions", "messages": [{"role": "user", "content": PROSE}],
        "max_tokens": 200, "logprobs": True, "top_logprobs": 2}))
    completion = orjson.loads(await _post(url, token, {
        "path": "/v1/completions", "prompt": PROSE, "max_tokens": 200, "logprobs": 0}))
    answers = [(chat["choices"][0]["message"]["content"], chat["choices"][0]["logprobs"]),
               (completion["choices"][0]["text"], completion["choices"][0]["logprobs"])]
    for text, logprobs in answers:
        if tier == "verified":
            assert extract_payloads(text) and logprobs is None
        else:  # nothing alters the text: the logprobs spell it exactly
            assert not extract_payloads(text) and logprobs is not None
            tokens = [e["token"] for e in logprobs["content"]] if "content" in logprobs \
                else logprobs["tokens"]
            assert "".join(tokens) == strip_marks(text)
    # The header says why they are null, where they are.
    assert headers_seen == (["withheld"] * 2 if tier == "verified" else [None, None])


async def test_a_watermarked_stream_carries_no_logprobs(url: str, mint: MintToken) -> None:
    headers_seen.clear()
    raw = await _post(url, mint(tier="verified"), {
        "path": "/v1/chat/completions", "messages": [{"role": "user", "content": PROSE}],
        "max_tokens": 200, "logprobs": True, "stream": True})
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n\n")
              if line.startswith(b"data: {")]
    chunks = [c for e in events for c in e["choices"]]
    text = "".join(c["delta"].get("content") or "" for c in chunks)
    assert extract_payloads(text)
    assert len(chunks) > 50 and all(c.get("logprobs") is None for c in chunks)
    assert headers_seen == ["withheld"]
    # Not asked for, not mentioned.
    await _post(url, mint(tier="verified"), {
        "path": "/v1/completions", "prompt": PROSE, "max_tokens": 20, "stream": True})
    assert headers_seen == ["withheld", None]
