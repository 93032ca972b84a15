"""The simulator against vLLM's API shapes, over real sockets, with the openai SDK."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, Server, StartSim, chat, wait_until


def _client(sim: Server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)


async def test_deterministic_per_prompt_and_seed(sim: Server) -> None:
    async with _client(sim) as client:
        texts = [(await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], seed=s,
            max_tokens=20)).choices[0].message.content for p, s in
            [("a", 1), ("a", 1), ("b", 1), ("a", 2)]]
    assert texts[0] == texts[1]
    assert len({texts[0], texts[2], texts[3]}) == 3


async def test_usage_matches_tokenize(sim: Server, http: aiohttp.ClientSession) -> None:
    messages = [{"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Count my tokens, please!"}]
    async with http.post(sim.url + "/tokenize", json={"model": MODEL,
                                                      "messages": messages}) as resp:
        counted = (await resp.json())["count"]
    async with _client(sim) as client:
        result = await client.chat.completions.create(model=MODEL, messages=messages,
                                                      max_tokens=5)
    assert result.usage is not None and result.usage.prompt_tokens == counted
    async with http.post(sim.url + "/tokenize", json={"model": MODEL,
                                                      "prompt": "two words"}) as resp:
        body = await resp.json()
    async with http.post(sim.url + "/detokenize", json={"model": MODEL,
                                                        "tokens": body["tokens"]}) as resp:
        assert (await resp.json())["prompt"] == "two words"


async def test_max_tokens_stop_and_n(sim: Server) -> None:
    async with _client(sim) as client:
        base = await client.completions.create(model=MODEL, prompt="p", max_tokens=30,
                                               extra_body={"ignore_eos": True})
    assert base.usage is not None and base.usage.completion_tokens == 30
    assert base.choices[0].finish_reason == "length"
    text = base.choices[0].text
    stop_word = text.split()[5]
    async with _client(sim) as client:
        stopped = await client.completions.create(model=MODEL, prompt="p", max_tokens=30,
                                                  stop=[stop_word])
        many = await client.completions.create(model=MODEL, prompt="p", max_tokens=5, n=3)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[:text.index(stop_word)]
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert len({c.text for c in many.choices}) == 3


async def test_stream_events_and_usage_chunk(sim: Server, http: aiohttp.ClientSession) -> None:
    body = chat(stream=True, max_tokens=4, stream_options={"include_usage": True})
    async with http.post(sim.url + "/v1/chat/completions", json=body) as resp:
        raw = await resp.read()
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
     ({"model": MODEL, "messages": []}, 400, "messages"),
     ({**chat(), "stream_options": {"include_usage": True}}, 400, "stream_options"),
     ({**chat(), "max_tokens": 10 ** 6}, 400, None)],
)
async def test_vllm_error_shapes(sim: Server, http: aiohttp.ClientSession, body: object,
                                 status: int, param: str | None) -> None:
    async with http.post(sim.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert error["code"] == status and error["param"] == param
    assert error["type"].endswith("Error")


async def test_fault_status_and_drop(sim: Server, http: aiohttp.ClientSession) -> None:
    async with http.post(sim.url + "/v1/chat/completions",
                         json=chat("[[sim:status=503]]")) as resp:
        assert resp.status == 503
    async with http.post(sim.url + "/v1/chat/completions",
                         json=chat("[[sim:drop_after=2]]", stream=True, max_tokens=10)) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_pacing_and_abort_counted(start_sim: StartSim) -> None:
    sim = await start_sim(tokens_per_second=50)
    async with aiohttp.ClientSession() as http:
        started = asyncio.get_running_loop().time()
        async with http.post(sim.url + "/v1/completions",
                             json={"model": MODEL, "prompt": "x", "max_tokens": 10,
                                   "ignore_eos": True, "stream": True}) as resp:
            await resp.read()
        assert asyncio.get_running_loop().time() - started >= 9 / 50
        async with http.post(sim.url + "/v1/completions",
                             json={"model": MODEL, "prompt": "x", "max_tokens": 1000,
                                   "stream": True, "ignore_eos": True}) as resp:
            await resp.content.readline()
            resp.close()
    await wait_until(lambda: sim.stats.aborted == 1)
    async with aiohttp.ClientSession() as http, http.get(sim.url + "/metrics") as resp:
        families = {f.name for f in text_string_to_metric_families(await resp.text())}
    assert {"vllm:num_requests_running", "vllm:request_success",
            "vllm:time_to_first_token_seconds", "vllm:generation_tokens"} <= families


async def test_embeddings_are_unit_vectors(sim: Server, http: aiohttp.ClientSession) -> None:
    async with http.post(sim.url + "/v1/embeddings", json={"model": MODEL,
                                                           "input": ["a", "a", "b"]}) as resp:
        data = (await resp.json())["data"]
    vectors = [d["embedding"] for d in data]
    assert vectors[0] == vectors[1] != vectors[2]
    assert abs(sum(v * v for v in vectors[0]) - 1) < 1e-9
