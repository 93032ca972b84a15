"""Upstream faults through a live gateway, each case ending with the leak check: expected
status, no hang, no task, client connection or upstream connection left behind.

Covered elsewhere, without the leak check: the same sim faults one by one
(tests/pipeline/upstream/test_relay.py), all upstreams down then one back
(tests/pipeline/upstream/test_pool.py), bad policy edits (tests/policy/test_reload.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest

from gateway.context import POOL
from tests.conftest import MODEL, Server, StartGateway, StartSim, chat, free_port, wait_until
from tests.hardening.conftest import CONNECTION_TASK, MakeLeakCheck

TIMEOUTS = {"ttfb_s": 1.0, "idle_s": 0.5}
# One backend takes every fault in turn: passive ejection would turn the next case into a
# 503 "no healthy upstream" (that path has its own test in test_pool.py).
NO_EJECTION = {"interval_s": 0.1, "probe_timeout_s": 0.5, "failures_to_eject": 1000}


@dataclass(frozen=True)
class Outcome:
    status: int
    events: list[bytes]  # SSE payloads of a streamed 200, else []
    body: bytes
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)


async def ask(url: str, token: str, body: dict[str, object],
              path: str = "/v1/chat/completions") -> Outcome:
    """One request on its own connection, closed afterwards (so connections can be counted)."""
    started = time.monotonic()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.post(url + path, json=body) as resp:
        raw = await resp.read()
        streamed = resp.status == 200 and resp.content_type == "text/event-stream"
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e] if streamed else []
    return Outcome(resp.status, events, raw, time.monotonic() - started, dict(resp.headers))


def _error_code(outcome: Outcome) -> str | None:
    if outcome.events:
        return orjson.loads(outcome.events[-1])["error"]["type"]  # type: ignore[no-any-return]
    error = orjson.loads(outcome.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error["code"]  # type: ignore[no-any-return]


# (case, prompt directive, stream, status, error code or mid-stream error type)
SIM_FAULTS = [
    ("429", "[[sim:status=429]]", False, 429, "rate_limit_exceeded"),
    ("500", "[[sim:status=500]]", True, 502, "bad_gateway"),
    ("503", "[[sim:status=503]]", False, 503, "service_unavailable"),
    ("reset", "[[sim:reset]]", True, 502, "bad_gateway"),
    ("no first token", "[[sim:ttft=30]]", True, 504, "upstream_timeout"),
    ("never answers", "[[sim:stall_after=0]]", False, 504, "upstream_timeout"),
    ("stall mid-stream", "[[sim:stall_after=2]]", True, 200, "upstream_timeout"),
    ("drop mid-stream", "[[sim:drop_after=2]]", True, 200, "upstream_error"),
    ("dropped before answering", "[[sim:drop_after=2]]", False, 502, "bad_gateway"),
    ("malformed event", "[[sim:malformed_after=2]]", True, 200, "upstream_error"),
    ("body not JSON", "[[sim:malformed_after=2]]", False, 502, "bad_gateway"),
]


async def test_simulated_upstream_faults(start_gateway: StartGateway, sim: Server, token: str,
                                         leak_check: MakeLeakCheck) -> None:
    gateway = await start_gateway(sim.url, timeouts=TIMEOUTS, retries=0, health=NO_EJECTION)
    assert (await ask(gateway.url, token, chat(max_tokens=2))).status == 200
    check = leak_check(gateway)
    for case, directive, stream, status, code in SIM_FAULTS:
        aborted = sim.stats.aborted
        outcome = await asyncio.wait_for(
            ask(gateway.url, token, chat(f"{directive} go", stream=stream, max_tokens=20)), 10)
        assert outcome.status == status, (case, outcome.body[:300])
        assert outcome.seconds < TIMEOUTS["ttfb_s"] + 2, (case, outcome.seconds)
        assert _error_code(outcome) == code, (case, outcome.body[-300:])
        if status == 200:
            assert b"[DONE]" not in outcome.events, case
        if status == 429:  # normalised like the gateway's own: type, and when to retry
            assert orjson.loads(outcome.body)["error"]["type"] == "rate_limit_error"
            assert outcome.headers.get("Retry-After") == "1"
        await check.clean(case)
        if case in ("no first token", "never answers", "stall mid-stream"):
            await wait_until(lambda a=aborted: sim.stats.aborted == a + 1)  # type: ignore[misc]
        assert sim.stats.in_flight == 0, case
    assert (await ask(gateway.url, token, chat(max_tokens=2))).status == 200


class RawUpstream:
    """A backend written on bare sockets: healthy to probes and model discovery, and
    misbehaving on completions in ways an HTTP server library would not allow."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.completions = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        task.set_name(CONNECTION_TASK)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if head.startswith(b"GET /health"):
                    self._answer(writer, b"application/json", b"{}")
                elif head.startswith(b"GET /v1/models"):
                    self._answer(writer, b"application/json", orjson.dumps(
                        {"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
                elif head.startswith(b"POST /v1/chat/completions"):
                    self.completions += 1
                    await self._misbehave(reader, writer)
                    return
                else:  # /tokenize among others: the gateway estimates instead
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _answer(writer: asyncio.StreamWriter, ctype: bytes, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def _misbehave(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if self.mode == "silent":  # accepts the request, never says a word
            await reader.read()  # until the gateway gives up and closes
            return
        if self.mode == "truncated json":  # promises 200 bytes, sends 40, hangs up
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 200\r\n\r\n" + b'{"id": "cmpl-1", "object": "chat.co')
        else:  # "truncated event": one whole event, then half of one, then hangs up
            chunk = orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                                  "model": MODEL, "choices": [{"index": 0, "delta": {
                                      "content": " Hi"}, "finish_reason": None}]})
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                         b"data: " + chunk + b"\n\ndata: " + chunk[:20])
        await writer.drain()


@pytest.fixture
async def raw_upstreams() -> AsyncIterator[list[RawUpstream]]:
    made: list[RawUpstream] = []
    yield made
    for upstream in made:
        await upstream.close()


@pytest.mark.parametrize(("mode", "stream", "status", "code"), [
    ("silent", False, 504, "upstream_timeout"),
    ("silent", True, 504, "upstream_timeout"),
    ("truncated json", False, 502, "bad_gateway"),
    ("truncated event", True, 200, "upstream_error"),
])
async def test_raw_upstream_faults(start_gateway: StartGateway, token: str,
                                   raw_upstreams: list[RawUpstream], leak_check: MakeLeakCheck,
                                   mode: str, stream: bool, status: int, code: str) -> None:
    upstream = RawUpstream(mode)
    raw_upstreams.append(upstream)
    await upstream.start()
    gateway = await start_gateway(upstream.url, timeouts=TIMEOUTS, retries=0)
    await wait_until(lambda: gateway.app[POOL].ready)
    check = leak_check(gateway)
    outcome = await asyncio.wait_for(ask(gateway.url, token, chat(stream=stream)), 10)
    assert outcome.status == status, outcome.body[:300]
    assert _error_code(outcome) == code
    assert outcome.seconds < TIMEOUTS["ttfb_s"] + 2
    assert upstream.completions == 1
    await check.clean(mode)


async def test_refused_connection_is_502_and_leaves_nothing(
        start_gateway: StartGateway, start_sim: StartSim, servers: list[object], token: str,
        leak_check: MakeLeakCheck) -> None:
    port = free_port()
    sim = await start_sim(port=port)
    gateway = await start_gateway(sim.url, timeouts=TIMEOUTS, health={"interval_s": 60},
                                  retries=0)
    assert (await ask(gateway.url, token, chat(max_tokens=2))).status == 200
    check = leak_check(gateway)
    await servers.pop(0).cleanup()  # type: ignore[attr-defined]  # the sim is gone, port closed
    outcome = await ask(gateway.url, token, chat())
    assert outcome.status == 502 and _error_code(outcome) == "bad_gateway"
    await check.clean("refused")


@pytest.mark.parametrize("when", ["before headers", "at first token", "mid-stream"])
async def test_client_disconnect_aborts_upstream(start_gateway: StartGateway, sim: Server,
                                                 token: str, leak_check: MakeLeakCheck,
                                                 when: str) -> None:
    gateway = await start_gateway(sim.url)
    assert (await ask(gateway.url, token, chat(max_tokens=2))).status == 200
    check = leak_check(gateway)
    directive = "[[sim:ttft=30]]" if when == "before headers" else "[[sim:tps=20]]"
    body = chat(directive, stream=True, max_tokens=500)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        request = asyncio.create_task(http.post(gateway.url + "/v1/chat/completions", json=body))
        await wait_until(lambda: sim.stats.in_flight == 1)
        if when == "before headers":
            request.cancel()
        else:
            resp = await request
            for _ in range(2 if when == "at first token" else 5):  # the role chunk first
                await resp.content.readuntil(b"\n\n")
            resp.close()
    await wait_until(lambda: sim.stats.aborted == 1, within=3)
    assert sim.stats.in_flight == 0
    await check.clean(when)
