"""The relay over real sockets: SSE framing, usage handling, output filters, faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.context import POOL
from gateway.pipeline.ratelimit import stage as ratelimit_stage
from gateway.pipeline.upstream import relay as relay_module
from gateway.pipeline.upstream.reading import SMALL_BODY_BYTES
from gateway.pipeline.upstream.sse import DONE_EVENT, frame_json
from tests.conftest import (
    MODEL,
    Server,
    StartGateway,
    StartSim,
    chat,
    fake_backend,
    model_list,
    wait_until,
)

pytestmark = pytest.mark.both_loops


def _events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: "), event
    return [e[6:] for e in events]


async def _post(http: aiohttp.ClientSession, server: Server, body: dict[str, Any],
                path: str = "/v1/chat/completions") -> tuple[int, bytes, Any]:
    async with http.post(server.url + path, json=body) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_stream_framing_is_byte_exact_openai(gateway: Server,
                                                   http: aiohttp.ClientSession) -> None:
    status, raw, headers = await _post(http, gateway, chat(stream=True, max_tokens=6))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = _events(raw)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["choices"] for c in chunks), "usage chunk must be dropped when not asked"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_usage_chunk_kept_when_asked(gateway: Server, http: aiohttp.ClientSession) -> None:
    body = chat(stream=True, max_tokens=6, stream_options={"include_usage": True})
    _, raw, _ = await _post(http, gateway, body)
    chunks = [orjson.loads(e) for e in _events(raw)[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize("stream", [False, True])
async def test_output_filter_transforms_stream_and_non_stream(
        start_gateway: StartGateway, sim: Server, http: aiohttp.ClientSession,
        stream: bool) -> None:
    body = chat("filters please", max_tokens=30, seed=7)
    _, raw, _ = await _post(http, sim, body)
    direct = orjson.loads(raw)["choices"][0]["message"]["content"]
    word = direct.split()[2]
    gateway = await start_gateway(sim.url, output={"redact": [word]})
    _, raw, _ = await _post(http, gateway, {**body, "stream": stream})
    if stream:
        got = "".join(orjson.loads(e)["choices"][0]["delta"].get("content", "")
                      for e in _events(raw)[:-1])
    else:
        got = orjson.loads(raw)["choices"][0]["message"]["content"]
    assert word not in got
    assert got == direct.replace(word, "[redacted]")


async def test_completions_filter_in_stream(start_gateway: StartGateway, sim: Server,
                                            http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "prompt": "complete me", "max_tokens": 20, "seed": 2}
    _, raw, _ = await _post(http, sim, body, "/v1/completions")
    direct = orjson.loads(raw)["choices"][0]["text"]
    word = direct.split()[1]
    gateway = await start_gateway(sim.url, output={"redact": [word]})
    _, raw, _ = await _post(http, gateway, {**body, "stream": True}, "/v1/completions")
    got = "".join(orjson.loads(e)["choices"][0]["text"] for e in _events(raw)[:-1])
    assert got == direct.replace(word, "[redacted]")


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("status=400", 400, None),
        ("status=429", 429, "rate_limit_exceeded"),
        ("status=500", 502, "bad_gateway"),
        ("status=503", 503, "service_unavailable"),
        ("reset", 502, "bad_gateway"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_failure_before_first_byte(gateway: Server, http: aiohttp.ClientSession,
                                                  fault: str, status: int, code: str | None,
                                                  stream: bool) -> None:
    got, raw, headers = await _post(http, gateway, chat(f"[[sim:{fault}]]", stream=stream))
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    error = orjson.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize("fault", ["drop_after=3", "malformed_after=3"])
async def test_failure_mid_stream_ends_with_error_event(gateway: Server,
                                                        http: aiohttp.ClientSession,
                                                        fault: str) -> None:
    status, raw, _ = await _post(http, gateway, chat(f"[[sim:{fault}]]", stream=True,
                                                     max_tokens=20))
    assert status == 200
    events = _events(raw)
    assert b"[DONE]" not in events
    last = orjson.loads(events[-1])
    assert last["error"]["type"] == "upstream_error"
    assert len(events) >= 3


async def test_stall_mid_stream_hits_idle_timeout(start_gateway: StartGateway, sim: Server,
                                                  http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(sim.url, timeouts={"idle_s": 0.3})
    status, raw, _ = await asyncio.wait_for(
        _post(http, gateway, chat("[[sim:stall_after=2]]", stream=True, max_tokens=20)), 5)
    assert status == 200
    assert orjson.loads(_events(raw)[-1])["error"]["type"] == "upstream_timeout"
    await wait_until(lambda: sim.stats.aborted == 1)


async def test_a_steady_stream_longer_than_the_idle_timeout_is_not_cut(
        start_gateway: StartGateway, sim: Server, http: aiohttp.ClientSession) -> None:
    # Gaps of 0.1 s, each under the 0.3 s idle limit, for about 2 s in all.
    gateway = await start_gateway(sim.url, timeouts={"idle_s": 0.3})
    status, raw, _ = await _post(http, gateway, chat("[[sim:tps=10]]", stream=True,
                                                     max_tokens=20, ignore_eos=True))
    assert status == 200
    assert _events(raw)[-1] == b"[DONE]"
    assert sim.stats.completed == 1


async def test_a_client_that_stops_reading_is_dropped_as_its_own_doing(
        start_gateway: StartGateway, sim: Server, token: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """While the client accepts nothing, the relay reads nothing upstream either: when the
    idle time runs out there, the client is the silent one. Its connection is closed, the
    upstream request with it, and the request counts as the client's (499), not as an
    upstream time-out that would page whoever runs the backend. (The simulator may well
    have finished: the gateway's receive buffer can hold its whole answer.)"""
    gateway = await start_gateway(sim.url, timeouts={"idle_s": 0.5})
    # Eight long choices: more than the kernel's socket buffers take (~4 MiB) while the
    # client reads nothing, so the relay has to wait on it.
    body = orjson.dumps(chat("a long story", stream=True, max_tokens=4000, n=8,
                             ignore_eos=True))
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, set early
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    with caplog.at_level(logging.INFO):
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                     b"Authorization: Bearer " + token.encode() + b"\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await wait_until(lambda: any(r.name == "gateway.request" for r in caplog.records),
                         within=10)
        with contextlib.suppress(ConnectionError):  # closed: all it got, then the end
            while await asyncio.wait_for(reader.read(1 << 20), 5):
                pass
        writer.close()
    assert [r.status for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "gateway.request"] == [499]
    assert any(r.name == "gateway.relay" and "accepted nothing" in r.getMessage()
               for r in caplog.records)
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert [s.labels["status"] for s in samples if s.name == "gateway_requests_total"
            and s.labels["route"] == "/v1/chat/completions"] == ["499"]
    assert not [s for s in samples if s.name == "gateway_upstream_errors_total"]


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_first_token_is_504(start_gateway: StartGateway, sim: Server,
                                       http: aiohttp.ClientSession, stream: bool) -> None:
    gateway = await start_gateway(sim.url, timeouts={"ttfb_s": 0.3})
    status, raw, _ = await _post(http, gateway, chat("[[sim:ttft=5]]", stream=stream))
    assert status == 504
    error = orjson.loads(raw)["error"]
    assert error["code"] == "upstream_timeout"
    assert "in time" in error["message"]  # not "stopped sending tokens": none had come
    await wait_until(lambda: sim.stats.aborted == 1)
    async with http.get(gateway.url + "/metrics") as resp:  # a slow backend shows, streams too
        text = await resp.text()
    assert [s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "gateway_upstream_errors_total" and s.labels["kind"] == "timeout"] \
        == [1]


async def test_client_disconnect_mid_stream_aborts_upstream(gateway: Server,
                                                            sim: Server, token: str) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.post(gateway.url + "/v1/chat/completions",
                      json=chat("[[sim:tps=20]]", stream=True, max_tokens=500)) as resp:
        await resp.content.readline()
        await wait_until(lambda: sim.stats.in_flight == 1)
        resp.close()
    await wait_until(lambda: sim.stats.aborted == 1, within=3)
    assert sim.stats.in_flight == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_before_first_token_aborts_upstream(
        gateway: Server, sim: Server, stream: bool, token: str) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        task = asyncio.create_task(http.post(gateway.url + "/v1/chat/completions",
                                             json=chat("[[sim:ttft=30]]", stream=stream)))
        await wait_until(lambda: sim.stats.in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await wait_until(lambda: sim.stats.aborted == 1, within=3)
    assert sim.stats.in_flight == 0


async def test_retry_on_other_backend_when_one_refuses(start_sim: StartSim,
                                                       start_gateway: StartGateway,
                                                       servers: list[Any],
                                                       http: aiohttp.ClientSession) -> None:
    good, doomed = await start_sim(), await start_sim()
    gateway = await start_gateway(good.url, doomed.url,
                                  health={"interval_s": 60, "failures_to_eject": 100})
    await servers.pop(1).cleanup()  # doomed stops; the gateway has not noticed yet
    for _ in range(6):
        status, _, _ = await _post(http, gateway, chat(max_tokens=3))
        assert status == 200
    assert good.stats.completed == 6


async def test_refused_with_no_alternative_is_502(start_sim: StartSim,
                                                  start_gateway: StartGateway,
                                                  servers: list[Any],
                                                  http: aiohttp.ClientSession) -> None:
    sim = await start_sim()
    gateway = await start_gateway(sim.url, health={"interval_s": 60})
    await servers.pop(0).cleanup()
    status, raw, _ = await _post(http, gateway, chat())
    assert status == 502
    assert orjson.loads(raw)["error"]["type"] == "upstream_error"


# -- a backend of the test's own: what vLLM (or a proxy before it) may stream ---------------

Events = Callable[[web.StreamResponse], Awaitable[None]]
ROLE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None}]}


def _chunk(content: str, finish: str | None = None) -> dict[str, Any]:
    return {**ROLE, "choices": [{"index": 0, "delta": {"content": content},
                                 "logprobs": None, "finish_reason": finish}]}


def _vllm_error(code: int) -> dict[str, Any]:
    """vLLM's error event (create_streaming_error_response): its code is the status."""
    return {"error": {"object": "error", "message": "xgrammar failed to compile schema",
                      "type": "BadRequestError" if code < 500 else "InternalServerError",
                      "param": None, "code": code}}


async def _streaming_backend(servers: list[web.AppRunner], events: Events,
                             calls: list[dict[str, Any]]) -> str:
    """Serves MODEL; each completion call is noted in `calls` and streams what `events`
    writes."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return model_list()
        if request.path == "/health":
            return web.Response()
        if request.path != "/v1/chat/completions":
            raise web.HTTPNotFound()
        calls.append(await request.json())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the gateway may hang up first
            await events(resp)
        return resp

    return await fake_backend(handler, servers)


def _writes(*parts: dict[str, Any] | bytes) -> Events:
    async def events(resp: web.StreamResponse) -> None:
        for part in parts:
            await resp.write(part if isinstance(part, bytes) else frame_json(part))
    return events


async def _errors_by_kind(http: aiohttp.ClientSession, gateway: Server) -> dict[str, float]:
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    return {s.labels["kind"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "gateway_upstream_errors_total"}


@pytest.mark.parametrize(("code", "status", "type_", "attempts"), [
    (400, 400, "invalid_request_error", 1),
    (429, 429, "rate_limit_error", 1),
    (500, 502, "upstream_error", 2),  # the engine failed: another backend may serve it
])
async def test_an_error_as_the_first_event_is_answered_with_its_status(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, code: int, status: int, type_: str,
        attempts: int) -> None:
    """vLLM reports some refusals inside the stream (a schema it cannot compile). That was
    a 502, run again (and again by the SDKs, which retry a 502), and counted against the
    backend until a client's bad requests ejected it."""
    calls: list[dict[str, Any]] = []
    url = await _streaming_backend(servers, _writes(_vllm_error(code), DONE_EVENT), calls)
    gateway = await start_gateway(url, health={"interval_s": 60, "failures_to_eject": 1,
                                               "eject_s": 60})
    got, raw, headers = await _post(http, gateway, chat(stream=True))
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    error = orjson.loads(raw)["error"]
    assert error["type"] == type_
    assert error["message"] == "xgrammar failed to compile schema"  # its own words, kept
    assert len(calls) == attempts
    if code == 429:
        assert headers["Retry-After"] == "1"
    counted = await _errors_by_kind(http, gateway)
    backend = gateway.app[POOL].backends[0]
    if code < 500:  # the backend did nothing wrong
        assert "midstream_error" not in counted
        assert backend.available(time.monotonic())
    else:
        assert counted["midstream_error"] == 2
        assert not backend.available(time.monotonic())


async def test_the_sdk_gets_a_first_event_refusal_once(
        start_gateway: StartGateway, servers: list[web.AppRunner], token: str) -> None:
    calls: list[dict[str, Any]] = []
    url = await _streaming_backend(servers, _writes(_vllm_error(400), DONE_EVENT), calls)
    gateway = await start_gateway(url)
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=token,
                                  max_retries=2) as client:
        with pytest.raises(openai.BadRequestError, match="xgrammar"):
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert len(calls) == 1


async def test_an_error_event_after_the_first_still_ends_the_stream(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession) -> None:
    calls: list[dict[str, Any]] = []
    url = await _streaming_backend(
        servers, _writes(ROLE, _chunk("Hello"), _vllm_error(400), DONE_EVENT), calls)
    gateway = await start_gateway(url)
    status, raw, _ = await _post(http, gateway, chat(stream=True))
    assert status == 200
    events = _events(raw)
    assert [orjson.loads(e) for e in events[:2]] == [ROLE, _chunk("Hello")]
    assert orjson.loads(events[-1])["error"]["type"] == "upstream_error"
    assert b"[DONE]" not in events and len(calls) == 1


async def test_an_error_event_does_not_quote_the_prompt(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession) -> None:
    """A mid-stream error's message went to the client unchecked, while an upstream
    refusal's is stripped of the caller's words (so a tier's system prompt never leaks)."""
    secret = "the quick brown fox jumps over the lazy dog near the river bank"
    quoting = {"error": {"message": f"engine failed on '{secret}'", "type": "x", "code": 500}}
    url = await _streaming_backend(
        servers, _writes(ROLE, _chunk("Hello"), quoting, DONE_EVENT), [])
    gateway = await start_gateway(url)
    status, raw, _ = await _post(http, gateway, chat(secret, stream=True))
    assert status == 200
    last = orjson.loads(_events(raw)[-1])
    assert last["error"]["type"] == "upstream_error"
    assert "lazy dog" not in raw.decode()


def _choice(**fields: Any) -> dict[str, Any]:
    return {**ROLE, "choices": [{"index": 0, "delta": {"content": "x"},
                                 "logprobs": None, "finish_reason": None, **fields}]}


# Answers a backend that is not vLLM (or a proxy before it) may send: each broke the relay
# (a 500 and a traceback, and a stream that then never ended).
BROKEN_CHUNKS = {
    "choices not a list": {**ROLE, "choices": 3},
    "a choice not an object": {**ROLE, "choices": ["x"]},
    "index not an integer": _choice(index=[0]),
    "index negative": _choice(index=-1),
    "index huge": _choice(index=10**9),
    "delta not an object": _choice(delta="text"),
    "content not a string": _choice(delta={"content": 7}),
    "finish_reason not a string": _choice(finish_reason={"why": "stop"}),
}


@pytest.mark.parametrize("broken", list(BROKEN_CHUNKS.values()), ids=list(BROKEN_CHUNKS))
async def test_a_chunk_of_the_wrong_shape_is_a_malformed_event(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, broken: dict[str, Any]) -> None:
    """First: retried, then 502. After the stream began: it ends with an error event."""
    for begun in (False, True):
        calls: list[dict[str, Any]] = []
        parts = (ROLE, _chunk("Hello"), broken) if begun else (broken,)
        gateway = await start_gateway(
            await _streaming_backend(servers, _writes(*parts, DONE_EVENT), calls))
        status, raw, _ = await asyncio.wait_for(_post(http, gateway, chat(stream=True)), 10)
        if begun:
            assert status == 200
            events = _events(raw)
            assert [orjson.loads(e) for e in events[:2]] == [ROLE, _chunk("Hello")]
            error = orjson.loads(events[-1])["error"]
        else:
            assert status == 502, raw
            error = orjson.loads(raw)["error"]
        assert error["message"] == "The upstream server sent a malformed event"
        # each attempt counted: a stream that had not begun is retried first
        assert (await _errors_by_kind(http, gateway)).get("malformed") == len(calls)
        assert len(calls) == (1 if begun else 2)


BROKEN_ANSWERS = {
    "no choices": {"output": "text no output filter would see"},
    "choices not a list": {"choices": {"0": {}}},
    "a choice not an object": {"choices": [None]},
    "index not an integer": {"choices": [{"index": "0", "message": {"content": "x"}}]},
    "message not an object": {"choices": [{"index": 0, "message": "x"}]},
    "content not a string": {"choices": [{"index": 0, "message": {"content": ["x"]}}]},
}


@pytest.mark.parametrize("broken", list(BROKEN_ANSWERS.values()), ids=list(BROKEN_ANSWERS))
async def test_an_answer_of_the_wrong_shape_is_502(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, broken: dict[str, Any]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return model_list()
        return web.json_response({"id": "c", "object": "chat.completion", "model": MODEL,
                                  **broken})

    gateway = await start_gateway(await fake_backend(handler, servers))
    status, raw, _ = await _post(http, gateway, chat())
    assert status == 502, raw
    assert orjson.loads(raw)["error"]["message"] == "The upstream server sent a broken answer"


@pytest.mark.parametrize("stream", [False, True])
async def test_negative_token_counts_from_upstream_count_as_none(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, stream: bool) -> None:
    """They reached a Prometheus counter, which refuses to go down: a 500."""
    usage = {"prompt_tokens": -5, "completion_tokens": -1, "total_tokens": -6}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return model_list()
        if not stream:
            return web.json_response({"id": "c", "object": "chat.completion", "model": MODEL,
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"content": "Hi."}}],
                                      "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in (ROLE, _chunk("Hi.", "stop"), {**ROLE, "choices": [], "usage": usage}):
            await resp.write(frame_json(part))
        await resp.write(DONE_EVENT)
        return resp

    gateway = await start_gateway(await fake_backend(handler, servers))
    status, raw, _ = await _post(http, gateway, chat(stream=stream))
    assert status == 200, raw
    assert raw.endswith(b"data: [DONE]\n\n") if stream else b"Hi." in raw


@pytest.mark.parametrize("context", [4096, None], ids=["context-known", "context-unknown"])
async def test_an_absurd_usage_count_does_not_lock_the_caller_out(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, context: int | None) -> None:
    """A backend's count of 10^12 tokens was charged in full: the caller's budget was in
    debt for thousands of years. Past what the model could have read and written (its
    context length, where the backend reports it) the count is not taken, and the
    gateway's own stands; else one request costs at most a whole bucket."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            entry = {"id": MODEL, "object": "model"}
            if context is not None:
                entry["max_model_len"] = context
            return web.json_response({"object": "list", "data": [entry]})
        return web.json_response({"id": "c", "object": "chat.completion", "model": MODEL,
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"content": "Hi there."}}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 10**12,
                                            "total_tokens": 10**12 + 3}})

    gateway = await start_gateway(await fake_backend(handler, servers))
    first, _, _ = await _post(http, gateway, chat(max_tokens=5))
    await wait_until(lambda: not ratelimit_stage._PENDING)  # the first is settled
    second, raw, _ = await _post(http, gateway, chat(max_tokens=5))
    assert first == 200
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    completion = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                     if s.name == "gateway_tokens_total" and s.labels["direction"] == "completion")
    assert second == 200, raw  # the bucket refills as usual: no debt to pay back
    # Past max_tokens (5) for its one sequence, the count is no report either way: the
    # metrics (and the audit) keep the relay's estimate of "Hi there.", twice.
    assert completion < 100


async def test_a_fault_of_the_gateway_s_own_mid_stream_still_ends_the_stream(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Once the 200 is out the error middleware cannot answer: a bug in the relay left the
    stream open with no end, and the client waiting for it."""
    real = relay_module._side_texts

    def fails_on_the_third_chunk(holder: dict[str, Any]) -> Any:
        if holder.get("content") == " there":
            raise RuntimeError("a bug")
        return real(holder)

    monkeypatch.setattr(relay_module, "_side_texts", fails_on_the_third_chunk)
    async def events(resp: web.StreamResponse) -> None:
        await _writes(ROLE, _chunk("Hello"))(resp)
        await asyncio.sleep(0.3)  # read apart: the first two go out before the third
        await _writes(_chunk(" there"), DONE_EVENT)(resp)

    gateway = await start_gateway(await _streaming_backend(servers, events, []))
    with caplog.at_level(logging.ERROR, logger="gateway.relay"):
        status, raw, _ = await asyncio.wait_for(_post(http, gateway, chat(stream=True)), 10)
    assert status == 200
    events = _events(raw)
    assert [orjson.loads(e) for e in events[:2]] == [ROLE, _chunk("Hello")]
    assert orjson.loads(events[-1])["error"] == {
        "message": "Internal error", "type": "internal_error", "param": None, "code": None}
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize("before_done", [(), ({**ROLE, "choices": [], "usage": {
    "prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}},)],
                         ids=["done-only", "usage-then-done"])
async def test_a_stream_without_a_chunk_is_a_failed_answer(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, before_done: tuple[dict[str, Any], ...]) -> None:
    """`data: [DONE]` alone was passed on as a 200: the SDK yielded no chunk and raised
    nothing. It is now what a stream that closes with no event is: retried, then 502."""
    calls: list[dict[str, Any]] = []
    url = await _streaming_backend(servers, _writes(*before_done, DONE_EVENT), calls)
    gateway = await start_gateway(url)
    status, raw, headers = await _post(http, gateway, chat(stream=True))
    assert status == 502
    assert headers["Content-Type"].startswith("application/json")
    assert orjson.loads(raw)["error"]["type"] == "upstream_error"
    assert len(calls) == 2  # retried, as a stream that ends before its first event
    assert (await _errors_by_kind(http, gateway))["truncated"] == 2


def _pings(seconds: float) -> Events:
    async def events(resp: web.StreamResponse) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await resp.write(b": ping\n\n")
            await asyncio.sleep(0.05)
    return events


def _then(*steps: Events) -> Events:
    async def events(resp: web.StreamResponse) -> None:
        for step in steps:
            await step(resp)
    return events


async def test_keep_alive_comments_do_not_hold_an_idle_stream_open(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession) -> None:
    """One chunk, then only `: ping` comments: each reset the idle timeout, so the stream
    stayed open, silent, for as long as the backend pinged."""
    calls: list[dict[str, Any]] = []
    url = await _streaming_backend(servers, _then(
        _writes(ROLE, _chunk("Hello")), _pings(3), _writes(_chunk("", "stop"), DONE_EVENT)),
        calls)
    gateway = await start_gateway(url, timeouts={"idle_s": 0.3})
    started = time.monotonic()
    status, raw, _ = await _post(http, gateway, chat(stream=True))
    assert time.monotonic() - started < 2
    assert status == 200
    events = _events(raw)  # every event is a data line: the pings are not passed on
    assert orjson.loads(events[-1])["error"]["type"] == "upstream_timeout"
    assert [orjson.loads(e) for e in events[:2]] == [ROLE, _chunk("Hello")]


async def test_keep_alive_comments_are_not_a_first_event(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession) -> None:
    calls: list[dict[str, Any]] = []
    url = await _streaming_backend(servers, _then(_pings(3), _writes(ROLE, DONE_EVENT)),
                                   calls)
    gateway = await start_gateway(url, timeouts={"ttfb_s": 0.3, "idle_s": 0.3})
    started = time.monotonic()
    status, raw, _ = await _post(http, gateway, chat(stream=True))
    assert time.monotonic() - started < 2
    assert status == 504
    assert orjson.loads(raw)["error"]["code"] == "upstream_timeout"


async def test_a_large_event_arriving_slowly_is_progress(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession) -> None:
    """Only comments do not count: the bytes of one long event still arriving do."""
    big = frame_json(_chunk("word " * 2000, "stop"))

    async def events(resp: web.StreamResponse) -> None:
        await resp.write(frame_json(ROLE))
        for i in range(0, len(big), len(big) // 10):  # 0.1 s gaps, about 1 s in all
            await asyncio.sleep(0.1)
            await resp.write(big[i:i + len(big) // 10])
        await resp.write(DONE_EVENT)

    url = await _streaming_backend(servers, events, [])
    gateway = await start_gateway(url, timeouts={"idle_s": 0.3})
    status, raw, _ = await _post(http, gateway, chat(stream=True))
    assert status == 200
    events_ = _events(raw)
    assert events_[-1] == b"[DONE]"
    assert orjson.loads(events_[1])["choices"][0]["delta"]["content"] == "word " * 2000


@pytest.mark.parametrize("include_usage", [None, False, True])
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", chat("Hello there", n=2)),
    ("/v1/completions", {"model": MODEL, "prompt": "Once upon", "n": 2}),
], ids=["chat", "completions"])
async def test_system_fingerprint_is_where_vllm_puts_it(
        gateway: Server, sim: Server, http: aiohttp.ClientSession, include_usage: bool | None,
        path: str, body: dict[str, Any]) -> None:
    """vLLM names its build on a stream's last event: the usage chunk when one was asked
    for, else the last choice chunk. The gateway always asks for usage, so without the
    client asking, the name left with the dropped usage chunk."""
    body = {**body, "stream": True, "max_tokens": 5, "seed": 4}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    answers = []
    for server in (sim, gateway):
        _, raw, _ = await _post(http, server, body, path)
        events = _events(raw)
        assert events[-1] == b"[DONE]"
        answers.append([orjson.loads(e) for e in events[:-1]])
    direct, via = answers
    assert len(via) == len(direct)
    for chunks in (direct, via):
        assert [i for i, c in enumerate(chunks) if "system_fingerprint" in c] \
            == [len(chunks) - 1]
    assert via[-1]["system_fingerprint"] == direct[-1]["system_fingerprint"]
    def ends(chunks: list[dict[str, Any]]) -> list[list[tuple[int, str | None]]]:
        return [[(c["index"], c["finish_reason"]) for c in chunk["choices"]] for chunk in chunks]

    assert ends(via) == ends(direct)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_answer_past_max_answer_bytes_is_502(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, framing: str) -> None:
    """A backend's answer is read into memory: past the bound it is refused, however it is
    framed, and the next answer of a sane size still goes through."""
    size = {"n": 200_000}

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return model_list()
        body = orjson.dumps({"id": "c", "object": "chat.completion", "model": MODEL,
                             "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                 "role": "assistant", "content": "x" * size["n"]}}]})
        if framing == "content-length":
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(body), 8192):
            await response.write(body[i:i + 8192])
        await response.write_eof()
        return response

    gateway = await start_gateway(await fake_backend(handler, servers),
                                  max_answer_bytes=100_000)
    status, raw, _ = await _post(http, gateway, chat())
    assert status == 502, raw[:200]
    assert orjson.loads(raw)["error"]["message"] == \
        "The upstream server's answer is larger than the gateway accepts"
    assert (await _errors_by_kind(http, gateway)).get("too_large") == 2  # and its retry
    size["n"] = 50_000
    status, raw, _ = await _post(http, gateway, chat())
    assert status == 200 and len(raw) > 50_000


@pytest.mark.parametrize("after_events", [0, 40])  # 40: past moderation's hold-back
async def test_a_stream_event_past_max_answer_bytes_ends_the_stream(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, after_events: int) -> None:
    """An event that never ends: refused once it passes the bound (a 502 before anything
    was sent; an error event after), not buffered until memory runs out."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return model_list()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(after_events):
            await response.write(b"data: " + orjson.dumps({
                "id": "c", "object": "chat.completion.chunk", "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": f"t{i} " + "word " * 10},
                             "finish_reason": None}]}) + b"\n\n")
        await response.write(b'data: {"id": "c", "choices": [{"delta": {"content": "')
        for _ in range(100):
            await response.write(b"y" * 8192)
        return response

    gateway = await start_gateway(await fake_backend(handler, servers),
                                  max_answer_bytes=65_536, retries=0)
    status, raw, _ = await _post(http, gateway, chat(stream=True))
    message = "The upstream server sent an event larger than the gateway accepts"
    if after_events:
        assert status == 200
        assert b"t0 " in raw and raw.endswith(b"\n\n")
        assert orjson.loads(raw.rsplit(b"data: ", 1)[1])["error"]["message"] == message
    else:
        assert status == 502 and orjson.loads(raw)["error"]["message"] == message
    assert (await _errors_by_kind(http, gateway)).get("too_large") == 1


async def test_an_error_body_past_the_small_bound_is_not_read(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession) -> None:
    """A refusal whose body runs to megabytes: the client still gets the refusal's status
    in OpenAI's shape, with a message of the gateway's own instead of the body."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return model_list()
        if request.path != "/v1/chat/completions":
            return web.Response()
        response = web.StreamResponse(status=400,
                                      headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"error": {"message": "')
        for _ in range(SMALL_BODY_BYTES // 65536 + 2):
            await response.write(b"z" * 65536)
        await response.write(b'"}}')
        await response.write_eof()
        return response

    gateway = await start_gateway(await fake_backend(handler, servers))
    status, raw, _ = await _post(http, gateway, chat())
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and "zzzz" not in error["message"]
    assert len(raw) < 4096


@pytest.mark.parametrize("stream", [False, True])
async def test_a_backend_behind_a_compressing_proxy_is_read(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession, stream: bool) -> None:
    """A proxy in front of vLLM (nginx `gzip on`) compresses whatever the request says it
    accepts. The gateway reads bytes as they come (it does not decompress), so it must
    ask for them uncompressed."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        accepted = request.headers.get("Accept-Encoding", "")
        if request.path == "/v1/chat/completions":
            seen.append(accepted)
        if request.path == "/v1/models":
            response = model_list()
        elif request.path != "/v1/chat/completions":
            return web.Response()
        elif stream:
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": MODEL,
                     "choices": [{"index": 0, "delta": {"content": "hello"},
                                  "finish_reason": "stop"}]}
            response = web.Response(body=frame_json(chunk) + DONE_EVENT,
                                    content_type="text/event-stream")
        else:
            response = web.json_response({
                "id": "c", "object": "chat.completion", "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hello"}}]})
        if "gzip" in accepted:
            response.enable_compression(web.ContentCoding.gzip)
        return response

    gateway = await start_gateway(await fake_backend(handler, servers))
    status, raw, _ = await _post(http, gateway, chat(stream=stream))
    assert status == 200, raw
    assert b"hello" in raw
    assert seen and all("gzip" not in accepted for accepted in seen)


async def test_idle_upstream_connections_close_before_vllm_closes_them(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession) -> None:
    """vLLM drops a kept-alive connection after 5 s idle: the gateway must not be the one
    still holding it then. A connection idle 4.6 s is not reused; one used again soon is."""
    peers: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return model_list()
        if request.path == "/v1/chat/completions":
            peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
            return web.json_response({
                "id": "c", "object": "chat.completion", "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hi"}}]})
        return web.Response()

    gateway = await start_gateway(await fake_backend(handler, servers),
                                  health={"interval_s": 60})
    for pause in (0.2, 4.6):
        assert (await _post(http, gateway, chat()))[0] == 200
        await asyncio.sleep(pause)
    assert (await _post(http, gateway, chat()))[0] == 200
    assert peers[0] == peers[1] != peers[2]


async def test_streams_one_after_another_share_one_upstream_connection(
        start_gateway: StartGateway, servers: list[web.AppRunner],
        http: aiohttp.ClientSession) -> None:
    """A stream's last bytes (the chunked encoding's end) arrive after its [DONE]: the
    connection is kept for the next request, not closed and opened again each time (a
    busy gateway would run out of ports, each closed connection waiting a minute)."""
    peers: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            return model_list()
        if request.path != "/v1/chat/completions":
            return web.Response()
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in ({"id": "c", "object": "chat.completion.chunk", "model": MODEL,
                       "choices": [{"index": 0, "delta": {"content": "hi"},
                                    "finish_reason": "stop"}]},
                      {"id": "c", "object": "chat.completion.chunk", "model": MODEL,
                       "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                                "total_tokens": 4}}):
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await asyncio.sleep(0.02)  # the end of the body comes in a later packet
        await resp.write_eof()
        return resp

    gateway = await start_gateway(await fake_backend(handler, servers),
                                  health={"interval_s": 60})
    for _ in range(3):
        status, raw, _ = await _post(http, gateway, chat(stream=True))
        assert status == 200 and raw.endswith(b"data: [DONE]\n\n"), raw
        await asyncio.sleep(0.1)  # the body's end has arrived by now
    assert len(peers) == 3 and len(set(peers)) == 1, peers
