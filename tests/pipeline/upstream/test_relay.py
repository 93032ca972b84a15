"""The relay over real sockets: SSE framing, usage handling, output filters, faults."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL, Server, StartGateway, StartSim, chat, wait_until


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
