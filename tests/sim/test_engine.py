"""Serving over real sockets: pacing, stream faults, and noticing a client that leaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.sim import SimSettings, create_sim_app
from gateway.sim.app import SIM_METRICS
from tests.conftest import MODEL, Server, StartSim, chat, wait_until
from tests.sim.conftest import Raw, chunks, read_until_broken

CHAT = "/v1/chat/completions"


@pytest.fixture(params=[True, False], ids=["handler-cancellation", "transport-polling"])
async def any_sim(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """The simulator under both aiohttp modes: a lost client cancels the handler, or not."""
    app = create_sim_app(SimSettings())
    runner = web.AppRunner(app, handler_cancellation=request.param, access_log=None,
                           shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield Server(f"http://{host}:{port}", app)
    await runner.cleanup()


def _aborts(app: web.Application) -> float:
    registry: CollectorRegistry = app[SIM_METRICS].registry
    value = registry.get_sample_value("vllm:request_success_total", {
        "model_name": MODEL, "engine": "0", "finished_reason": "abort"})
    assert value is not None
    return value


async def _timed_events(resp: aiohttp.ClientResponse) -> list[tuple[float, bytes]]:
    return [(time.monotonic(), line) async for line in resp.content if line.startswith(b"data")]


async def test_tokens_are_paced_from_the_first_token(sim: Server,
                                                     session: aiohttp.ClientSession) -> None:
    body = chat("[[sim:tps=100,ttft=0.3]]", stream=True, max_tokens=21, ignore_eos=True)
    started = time.monotonic()
    async with session.post(sim.url + CHAT, json=body) as resp:
        headers_at = time.monotonic()
        timed = await _timed_events(resp)
    assert len(timed) == 1 + 21 + 1  # role, tokens, [DONE]
    first, last = timed[1][0], timed[-2][0]  # the first and the last token
    assert first - started >= 0.3
    assert first - headers_at >= 0.2  # headers go out before the first token, as in vLLM
    assert 0.2 <= last - first < 1.0  # 20 intervals of 10 ms


async def test_non_stream_takes_as_long_as_the_stream(sim: Server,
                                                      session: aiohttp.ClientSession) -> None:
    body = chat("[[sim:tps=100,ttft=0.1]]", max_tokens=11, ignore_eos=True)
    started = time.monotonic()
    async with session.post(sim.url + CHAT, json=body) as resp:
        assert (await resp.json())["usage"]["completion_tokens"] == 11
    assert 0.2 <= time.monotonic() - started < 1.5


async def test_fast_streams_leave_room_for_other_requests(sim: Server,
                                                          session: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "prompt": "long", "max_tokens": 1500, "ignore_eos": True,
            "stream": True}

    async def stream() -> float:
        async with session.post(sim.url + "/v1/completions", json=body) as resp:
            await resp.read()
        return time.monotonic()

    streaming = asyncio.create_task(stream())
    await wait_until(lambda: sim.stats.in_flight == 1)
    async with session.get(sim.url + "/health") as resp:
        assert resp.status == 200
    answered = time.monotonic()
    assert answered < await streaming


@pytest.mark.parametrize(("directive", "stream", "read_events"), [
    ("[[sim:tps=50]]", True, 3),  # between tokens
    ("[[sim:ttft=30]]", True, 0),  # waiting for the first token, headers sent
    ("[[sim:stall_after=2]]", True, 3),  # stalled
    ("[[sim:ttft=30]]", False, 0),  # non-stream, waiting
    ("[[sim:tps=1]]", False, 0),  # non-stream, generating
])
async def test_a_client_that_leaves_is_counted_as_an_abort(
        any_sim: Server, directive: str, stream: bool, read_events: int) -> None:
    body = chat(directive, stream=stream, max_tokens=500, ignore_eos=True)
    raw = await Raw.post(any_sim.url, CHAT, body)
    if stream:
        await raw.head()
        for _ in range(read_events):
            await raw.reader.readuntil(b"\n\n")
    await wait_until(lambda: any_sim.stats.in_flight == 1)
    left = time.monotonic()
    await raw.close()
    await wait_until(lambda: any_sim.stats.aborted == 1, within=2)
    assert time.monotonic() - left < 1.0
    assert (any_sim.stats.requests, any_sim.stats.completed, any_sim.stats.in_flight) == \
        (1, 0, 0)
    assert _aborts(any_sim.app) == 1


async def test_drop_after_closes_the_stream_without_done(sim: Server,
                                                         session: aiohttp.ClientSession) -> None:
    async with session.post(sim.url + CHAT, json=chat("[[sim:drop_after=3]]", stream=True,
                                                      max_tokens=10)) as resp:
        assert resp.status == 200
        payloads, broken = await read_until_broken(resp)
    assert broken and b"[DONE]" not in payloads
    assert len(payloads) == 1 + 3  # the role chunk and three tokens
    await wait_until(lambda: sim.stats.aborted == 1)


async def test_drop_after_past_the_end_still_drops_before_done(
        sim: Server, session: aiohttp.ClientSession) -> None:
    body = chat("[[sim:drop_after=99]]", stream=True, max_tokens=4,
                stream_options={"include_usage": True})
    async with session.post(sim.url + CHAT, json=body) as resp:
        payloads, broken = await read_until_broken(resp)
    assert broken and len(payloads) == 1 + 4


async def test_drop_after_without_streaming_hangs_up(sim: Server,
                                                     session: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.post(sim.url + CHAT, json=chat("[[sim:drop_after=0]]")) as resp:
            await resp.read()
    await wait_until(lambda: sim.stats.aborted == 1)


async def test_malformed_after_inserts_a_bad_event_then_goes_on(
        sim: Server, session: aiohttp.ClientSession) -> None:
    async with session.post(sim.url + "/v1/completions",
                            json={"model": MODEL, "prompt": "[[sim:malformed_after=2]]",
                                  "max_tokens": 5, "stream": True}) as resp:
        raw = await resp.read()
    assert b"data: {not json\n\n" in raw
    good = raw.replace(b"data: {not json\n\n", b"")
    events = chunks(good)
    assert raw.index(b"{not json") > raw.index(orjson.dumps(events[1]))
    assert raw.index(b"{not json") < raw.index(orjson.dumps(events[2]))
    assert len(events) == 5
    assert sim.stats.completed == 1


async def test_malformed_without_streaming_is_a_body_that_is_not_json(
        sim: Server, session: aiohttp.ClientSession) -> None:
    async with session.post(sim.url + CHAT, json=chat("[[sim:malformed_after=0]]")) as resp:
        assert resp.status == 200
        assert await resp.read() == b"{not json"


async def test_a_hundred_paced_streams_side_by_side(start_sim: StartSim) -> None:
    sim = await start_sim(tokens_per_second=50)
    body: dict[str, Any] = {"model": MODEL, "prompt": "x", "max_tokens": 10, "stream": True,
                            "ignore_eos": True}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.post(sim.url + "/v1/completions", json=body) as resp:
                return len(chunks(await resp.read()))

        started = time.monotonic()
        counts = await asyncio.gather(*(one() for _ in range(100)))
    assert counts == [10] * 100
    # One after another they would take 100 * 0.18 s; side by side, a fraction of that.
    assert time.monotonic() - started < 5.0
    assert sim.stats.completed == 100
