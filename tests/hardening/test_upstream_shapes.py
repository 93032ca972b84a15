"""Answers of random wrong shapes from a backend: each is a 2xx or a 502, a stream always
ends ([DONE] or an error event), and nothing takes the gateway down or leaves it waiting.

The cases found this way have their own tests in tests/pipeline/upstream/test_relay.py;
this one keeps looking. The seed is fixed, so a failure replays.
"""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import MODEL, StartGateway, chat, fake_backend

ODD = [None, 1, -1, 2**62, 1.5, "x", "", [], {}, [1], {"a": 1}, True, [None]]
ANSWERS = 120


class Mutator:
    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def __call__(self, value: Any, odds: float) -> Any:
        """`value` with some fields dropped, swapped for odd values, or added."""
        pick = self.random
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                roll = pick.random()
                if roll < odds / 3:
                    continue
                out[key] = pick.choice(ODD) if roll < odds else self(item, odds)
            if pick.random() < odds / 2:
                out[pick.choice(["usage", "error", "choices", "index"])] = pick.choice(ODD)
            return out
        if isinstance(value, list):
            return pick.choice(ODD) if pick.random() < odds / 3 else [
                self(item, odds) for item in value]
        return value


def _chunk(i: int, last: bool) -> dict[str, Any]:
    delta = {"content": f"w{i} "} if i else {"role": "assistant", "content": ""}
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": "stop" if last else None}]}


def _backend(mutate: Mutator) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":  # as vLLM: its context length (usage_ceiling)
            return web.json_response({"object": "list", "data": [
                {"id": MODEL, "object": "model", "max_model_len": 4096}]})
        if request.path == "/health":
            return web.Response()
        body = await request.json()
        if not body.get("stream"):
            answer = {"id": "c", "object": "chat.completion", "created": 1, "model": MODEL,
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": "hello"}}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                "total_tokens": 4}}
            return web.Response(body=orjson.dumps(mutate(answer, 0.3)),
                                content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        count = mutate.random.randrange(1, 5)
        for i in range(count):
            event = mutate(_chunk(i, i == count - 1), 0.2)
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        if mutate.random.random() < 0.5:
            usage = {"id": "c", "object": "chat.completion.chunk", "created": 1,
                     "model": MODEL, "choices": [],
                     "usage": {"prompt_tokens": 3, "completion_tokens": count,
                               "total_tokens": count + 3}}
            await resp.write(b"data: " + orjson.dumps(mutate(usage, 0.3)) + b"\n\n")
        if mutate.random.random() < 0.9:
            await resp.write(b"data: [DONE]\n\n")
        return resp

    return handler


@pytest.mark.parametrize("seed", [1, 2])
async def test_answers_of_random_wrong_shapes_never_break_the_gateway(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, seed: int) -> None:
    mutate = Mutator(seed)
    gateway = await start_gateway(await fake_backend(_backend(mutate), servers),
                                  health={"failures_to_eject": 1_000_000})
    statuses: dict[int, int] = {}
    for n in range(ANSWERS):
        stream = n % 3 != 0
        body = chat(max_tokens=5, stream=stream,
                    **({"stream_options": {"include_usage": True}} if n % 2 else {}))
        async with http.post(gateway.url + "/v1/chat/completions", json=body,
                             timeout=aiohttp.ClientTimeout(total=10)) as resp:
            raw = await resp.read()
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        assert resp.status in (200, 502), (n, raw[-300:])
        if resp.status == 200 and stream:
            events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
            assert events[-1] == b"[DONE]" or "error" in orjson.loads(events[-1]), (n, raw)
            assert all(e == b"[DONE]" or isinstance(orjson.loads(e), dict) for e in events)
        elif resp.status == 502:
            assert orjson.loads(raw)["error"]["type"] == "upstream_error"
    # Both outcomes came up: the shapes broke some answers and left others whole.
    assert statuses.get(200, 0) > ANSWERS // 4 and statuses.get(502, 0) > ANSWERS // 20
    async with http.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200
