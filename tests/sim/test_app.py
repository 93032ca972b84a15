"""The simulator against vLLM's API, over real sockets, with the openai SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.sim import SimSettings, run_sim
from tests.conftest import MODEL, Server, StartSim, chat, free_port
from tests.sim.conftest import Raw, chunks

CHAT = "/v1/chat/completions"
MESSAGES: list[Any] = [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Count my tokens, please!"}]


async def test_chat_with_the_sdk_stream_and_not(client: AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=4)
    assert whole.id.startswith("chatcmpl-") and whole.object == "chat.completion"
    [choice] = whole.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert whole.usage is not None and 17 <= whole.usage.completion_tokens <= 64

    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, seed=4, stream=True,
        stream_options={"include_usage": True})
    got = [chunk async for chunk in stream]
    assert got[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == \
        choice.message.content
    assert got[-2].choices[0].finish_reason == "stop"
    assert got[-1].choices == [] and got[-1].usage == whole.usage
    assert len(got) == 1 + whole.usage.completion_tokens + 1


async def test_completions_with_the_sdk_stream_and_not(client: AsyncOpenAI) -> None:
    whole = await client.completions.create(model=MODEL, prompt="Once upon", max_tokens=12)
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    stream = await client.completions.create(model=MODEL, prompt="Once upon", max_tokens=12,
                                             stream=True)
    pieces = [chunk.choices[0].text async for chunk in stream]
    assert len(pieces) == 12 and "".join(pieces) == whole.choices[0].text
    default = await client.completions.create(model=MODEL, prompt="Once upon")
    assert default.usage is not None and default.usage.completion_tokens == 16


async def test_n_choices_stop_and_max_tokens(client: AsyncOpenAI) -> None:
    base = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30,
                                                extra_body={"ignore_eos": True})
    text = base.choices[0].message.content or ""
    assert base.choices[0].finish_reason == "length"
    stop = text.split()[5]
    stopped = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                   max_tokens=30, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[:text.index(stop)]
    many = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5,
                                                n=3, stream=True)
    texts: dict[int, str] = {}
    async for chunk in many:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    assert sorted(texts) == [0, 1, 2] and len(set(texts.values())) == 3
    assert texts[0] == text[:len(texts[0])]


async def test_seed_from_the_request_or_the_settings(start_sim: StartSim) -> None:
    seeded = await start_sim(seed=3)
    default = await start_sim()

    async def text(sim: Server, **extra: Any) -> str:
        async with AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0) as c:
            result = await c.completions.create(model=MODEL, prompt="p", max_tokens=8, **extra)
        text: str = result.choices[0].text
        return text

    assert await text(seeded) == await text(default, seed=3) != await text(default)


async def test_sdk_errors(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="nope", messages=MESSAGES)
    assert missing.value.body == {"message": "The model `nope` does not exist.",
                                  "type": "NotFoundError", "param": "model", "code": 404}
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10**6)


async def test_models_and_embeddings_with_the_sdk(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    [card] = models.data
    assert (card.id, card.object, card.owned_by) == (MODEL, "model", "vllm")
    assert card.model_extra is not None and card.model_extra["max_model_len"] == 8192
    assert card.model_extra["root"] == MODEL and card.model_extra["parent"] is None
    result = await client.embeddings.create(model=MODEL, input=["a", "b"])
    assert [len(d.embedding) for d in result.data] == [384, 384]


async def test_sse_framing_is_byte_exact(sim: Server, session: aiohttp.ClientSession) -> None:
    body = chat(stream=True, max_tokens=4, stream_options={"include_usage": True})
    async with session.post(sim.url + CHAT, json=body) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = await resp.read()
    events = chunks(raw)  # checks `data: <payload>\n\n` framing and the final [DONE]
    assert raw.endswith(b"data: [DONE]\n\n")
    assert [orjson.dumps(e) for e in events] == [line[6:] for line in raw.split(b"\n\n")[:-2]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["finish_reason"] for e in events[1:-1]] == \
        [None, None, None, "length"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4
    assert len({e["id"] for e in events}) == 1


@pytest.mark.parametrize(("route", "body", "counted"), [
    (CHAT, {"messages": MESSAGES}, {"messages": MESSAGES}),
    ("/v1/completions", {"prompt": "two words"}, {"prompt": "two words"}),
])
async def test_usage_matches_tokenize(sim: Server, session: aiohttp.ClientSession, route: str,
                                      body: dict[str, Any], counted: dict[str, Any]) -> None:
    async with session.post(sim.url + "/tokenize", json={"model": MODEL, **counted}) as resp:
        tokenized = await resp.json()
    assert set(tokenized) == {"count", "max_model_len", "tokens", "token_strs"}
    assert tokenized["count"] == len(tokenized["tokens"])
    assert tokenized["max_model_len"] == 8192
    async with session.post(sim.url + route,
                            json={"model": MODEL, "max_tokens": 3, **body}) as resp:
        usage = (await resp.json())["usage"]
    assert usage["prompt_tokens"] == tokenized["count"]


async def test_tokenize_and_detokenize(sim: Server, session: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "prompt": "café, two words", "return_token_strs": True}
    async with session.post(sim.url + "/tokenize", json=body) as resp:
        tokenized = await resp.json()
    assert "".join(tokenized["token_strs"]).startswith("caf")
    async with session.post(sim.url + "/detokenize",
                            json={"model": MODEL, "tokens": tokenized["tokens"]}) as resp:
        assert await resp.json() == {"prompt": "café, two words"}
    for path, bad in (("/detokenize", {"tokens": [-1]}), ("/detokenize", {"tokens": "x"}),
                      ("/tokenize", {"prompt": 5})):
        async with session.post(sim.url + path, json={"model": MODEL, **bad}) as resp:
            assert resp.status == 400


async def test_health_version_stats_and_metrics(sim: Server,
                                                session: aiohttp.ClientSession) -> None:
    async with session.get(sim.url + "/health") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with session.get(sim.url + "/version") as resp:
        assert set(await resp.json()) == {"version"}
    async with session.post(sim.url + CHAT, json=chat(max_tokens=3)) as resp:
        assert resp.status == 200
    async with session.get(sim.url + "/sim/stats") as resp:
        assert await resp.json() == {"requests": 1, "completed": 1, "aborted": 0,
                                     "in_flight": 0}
    async with session.get(sim.url + "/metrics") as resp:
        text = await resp.text()
    samples = {(s.name, s.labels.get("finished_reason")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("vllm:request_success_total", "length")] == 1
    assert samples[("vllm:request_success_total", "abort")] == 0
    assert samples[("vllm:generation_tokens_total", None)] == 3
    assert samples[("vllm:num_requests_running", None)] == 0


@pytest.mark.parametrize(("method", "path", "status", "detail"), [
    ("GET", "/nowhere", 404, "Not Found"), ("GET", CHAT, 405, "Method Not Allowed")])
async def test_unknown_routes_answer_like_fastapi(sim: Server, session: aiohttp.ClientSession,
                                                  method: str, path: str, status: int,
                                                  detail: str) -> None:
    async with session.request(method, sim.url + path) as resp:
        assert resp.status == status and await resp.json() == {"detail": detail}


@pytest.mark.parametrize("body", [b"{", b"[]"])
async def test_bad_json_is_a_400(sim: Server, session: aiohttp.ClientSession,
                                 body: bytes) -> None:
    async with session.post(sim.url + CHAT, data=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "BadRequestError"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("content", "header", "status"), [
    ("[[sim:status=503]] hi", "", 503), ("hi", "status=429", 429),
    ("hi", "[[sim:status=500]]", 500), ("[[sim:oops=1]]", "", 400)])
async def test_status_fault_answers_before_any_byte(sim: Server,
                                                    session: aiohttp.ClientSession,
                                                    content: str, header: str, status: int,
                                                    stream: bool) -> None:
    headers = {"x-sim-fault": header} if header else {}
    async with session.post(sim.url + CHAT, json=chat(content, stream=stream),
                            headers=headers) as resp:
        assert resp.status == status
        assert resp.headers["Content-Type"] == "application/json"
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert sim.stats.requests == 0


@pytest.mark.parametrize("route", [CHAT, "/v1/completions"])
async def test_reset_fault_closes_the_connection_before_any_byte(sim: Server,
                                                                 route: str) -> None:
    body = chat("[[sim:reset]]") if route == CHAT else {"model": MODEL, "prompt": "[[sim:reset]]"}
    raw = await Raw.post(sim.url, route, body)
    try:
        with contextlib.suppress(ConnectionResetError):  # an abort may arrive as a reset
            assert await raw.rest() == b""
    finally:
        await raw.close()
    assert sim.stats.requests == 0


async def test_run_sim_serves_until_cancelled(session: aiohttp.ClientSession) -> None:
    port = free_port()
    task = asyncio.create_task(run_sim(SimSettings(models=("a", "b")), "127.0.0.1", port))
    try:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(f"http://127.0.0.1:{port}/v1/models") as resp:
                    assert [m["id"] for m in (await resp.json())["data"]] == ["a", "b"]
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("run_sim did not start")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_prose_directive_streams_long_varied_text(sim: Server) -> None:
    body = chat("[[sim:prose=all]] Tell me everything.", stream=True,
                stream_options={"include_usage": True})
    async with aiohttp.ClientSession() as http:
        async with http.post(sim.url + CHAT, json=body) as resp:
            raw = await resp.read()
        async with http.post(sim.url + CHAT, json=chat("[[sim:prose=all]] Tell me everything."),
                             ) as resp:
            whole = await resp.json()
        async with http.post(sim.url + "/tokenize",
                             json={"model": MODEL, "prompt": whole["choices"][0]["message"]
                                   ["content"]}) as resp:
            counted = (await resp.json())["count"]
        async with http.post(sim.url + CHAT, json=chat("[[sim:prose=rainbows]] hi")) as resp:
            refused = resp.status
    events = chunks(raw)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if e.get("choices"))
    assert text == whole["choices"][0]["message"]["content"]
    assert len(text.split()) > 60 and "\n\n" in text
    usage = whole["usage"]["completion_tokens"]
    assert events[-1]["usage"]["completion_tokens"] == usage == counted + 1  # and the EOS
    assert refused == 400


async def test_an_api_key_guards_the_v1_paths_as_vllm_does(start_sim: StartSim) -> None:
    sim = await start_sim(api_key="sim-key-123")
    async with aiohttp.ClientSession() as http:
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                ({"Authorization": "Bearer sim-key-123"}, 200)):
            async with http.get(sim.url + "/v1/models", headers=headers) as resp:
                assert resp.status == status
                if status == 401:
                    assert await resp.json() == {"error": "Unauthorized"}
        async with http.get(sim.url + "/health") as resp:  # outside /v1: open
            assert resp.status == 200
    async with AsyncOpenAI(base_url=sim.url + "/v1", api_key="sim-key-123",
                           max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                   max_tokens=4)
        assert answer.choices[0].message.content


async def test_run_sim_drops_idle_connections_after_vllms_keep_alive() -> None:
    """As vLLM (uvicorn's timeout_keep_alive, 5 s): a kept-alive connection idle for 4 s
    still answers; one idle past 5 s is closed by the server."""
    port = free_port()
    task = asyncio.create_task(run_sim(SimSettings(), "127.0.0.1", port))
    request = b"GET /health HTTP/1.1\r\nHost: sim\r\n\r\n"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("run_sim did not start")
        writer.write(request)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(4.0)
        writer.write(request)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.read(), timeout=7.0) == b""  # closed
        writer.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
