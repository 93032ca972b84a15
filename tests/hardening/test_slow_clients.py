"""Clients too slow to send a request head, or idle too long, lose their connection:
aiohttp times out neither, so a trickle of header bytes held connections until the
process ran out of file descriptors (and then logged every failed accept())."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.devkeys import mint_token
from gateway.protocol import AcceptErrorThrottle, GatewayRunner
from tests.conftest import Process

pytestmark = pytest.mark.both_loops

HEAD_S = 0.5
SEND_S = 0.5
# Far more than loopback's socket buffers hold (a few MiB) while the client reads nothing.
BIG = 32 << 20


async def _echo_length(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


async def _big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * int(request.query.get("size", BIG)))


async def _big_stream(request: web.Request) -> web.StreamResponse:
    """A stream whose last write is the large one: no relay timer is running then."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"first\n")
    try:
        await response.write(b"y" * BIG)
    except BaseException as exc:
        request.app[ENDED].append(type(exc).__name__)
        raise
    request.app[ENDED].append("sent")
    return response


ENDED: web.AppKey[list[str]] = web.AppKey("ended")
SEND_TIMEOUTS: web.AppKey[list[float]] = web.AppKey("send_timeouts")


@pytest.fixture
async def app() -> web.Application:
    app = web.Application()
    app[ENDED], app[SEND_TIMEOUTS] = [], []
    app.router.add_route("*", "/", _echo_length)
    app.router.add_get("/big", _big)
    app.router.add_get("/big-stream", _big_stream)
    return app


@pytest.fixture
async def url(app: web.Application) -> AsyncIterator[str]:
    runner = GatewayRunner(app, header_timeout_s=HEAD_S, keepalive_timeout=1.5,
                           send_timeout_s=SEND_S, handler_cancellation=True,
                           on_send_timeout=lambda: app[SEND_TIMEOUTS].append(time.monotonic()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"{host}:{port}"
    await runner.cleanup()


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.split(":")
    return await asyncio.open_connection(host, int(port))


async def _closed_after(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from `started` until the server closed the connection (reading all)."""
    while await asyncio.wait_for(reader.read(65536), 5):
        pass
    return time.monotonic() - started


async def test_a_connection_that_sends_nothing_is_closed(url: str) -> None:
    reader, writer = await _connect(url)
    took = await _closed_after(reader, time.monotonic())
    assert HEAD_S * 0.8 < took < HEAD_S + 1.0
    writer.close()


async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(url: str) -> None:
    reader, writer = await _connect(url)
    started = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    feeding = asyncio.ensure_future(trickle())
    took = await _closed_after(reader, started)
    feeding.cancel()
    assert took < HEAD_S + 1.0  # the trickle alone would have lasted 6 s
    writer.close()


async def test_kept_alive_connections_serve_then_time_out(url: str) -> None:
    reader, writer = await _connect(url)
    for _ in range(2):  # whole requests, each well within the time
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"3"
        await asyncio.sleep(HEAD_S * 1.5)  # idle between requests is not a slow head
    writer.write(b"GET / HTTP/1.1\r\n")  # the next head starts, and stalls
    took = await _closed_after(reader, time.monotonic())
    assert took < HEAD_S + 1.0
    writer.close()
    reader, writer = await _connect(url)  # an idle kept-alive connection: keepalive_timeout
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert 1.0 < await _closed_after(reader, time.monotonic()) < 3.5
    writer.close()


async def test_a_slow_body_is_not_a_slow_head(url: str) -> None:
    # Bodies have their own limit (timeouts.client_body_s, answered 408 by the app).
    reader, writer = await _connect(url)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    for byte in b"12345678":
        await asyncio.sleep(0.2)  # 1.6 s in all: over three header time-outs
        writer.write(bytes([byte]))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def _connect_small_window(url: str) -> tuple[asyncio.StreamReader,
                                                           asyncio.StreamWriter]:
    host, port = url.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await asyncio.open_connection(sock=sock)


async def _read_all(reader: asyncio.StreamReader) -> int:
    """Bytes read until the server ends the connection (closed or reset)."""
    total = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
            total += len(chunk)
    return total


@pytest.mark.parametrize("path", ["/big", "/big-stream"])
async def test_a_client_that_reads_nothing_is_dropped(
        url: str, app: web.Application, path: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A response's write that the client never makes room for is bounded: its connection
    closes `send_timeout_s` after the buffers fill, and the handler is not left waiting."""
    reader, writer = await _connect_small_window(url)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gateway.http"):
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.sleep(SEND_S + 1.5)  # reading nothing
        got = await _read_all(reader)
    writer.close()
    assert got < BIG  # the connection ended before the whole body
    assert len(app[SEND_TIMEOUTS]) == 1
    assert app[SEND_TIMEOUTS][0] - started < SEND_S + 1.5
    assert [r.getMessage() for r in caplog.records if "accepted nothing" in r.getMessage()]
    if path == "/big-stream":
        assert app[ENDED] == ["CancelledError"]


async def test_a_slow_reader_that_keeps_reading_gets_everything(
        url: str, app: web.Application) -> None:
    """Slow is not silent: a client reading 640 KiB/s gets a 4 MiB response whole, though
    that takes many send timeouts. Most of what it accepts in one comes out of the
    kernel's send buffer: the server's own buffer may not move for a whole time-out."""
    size = 4 << 20
    reader, writer = await _connect_small_window(url)
    writer.write(f"GET /big?size={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    started, total = time.monotonic(), 0
    while total < size:  # headers and the body
        await asyncio.sleep(0.1)
        chunk = await asyncio.wait_for(reader.read(64 << 10), 5)
        assert chunk, "the server ended the connection"
        total += len(chunk)
    writer.close()
    assert time.monotonic() - started > 6 * SEND_S
    assert app[SEND_TIMEOUTS] == []


def test_failed_accepts_are_reported_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    throttle = AcceptErrorThrottle(every_s=3600)
    context = {"message": "socket.accept() out of system resource",
               "exception": OSError(24, "Too many open files")}
    with caplog.at_level(logging.DEBUG, logger="gateway.http"):
        for _ in range(1000):
            throttle(loop, context)
    loop.close()
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert throttle.suppressed == 999


async def test_gateway_serve_applies_the_client_timeouts(
        gateway_process: Callable[..., Process], tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("timeouts: {client_header_s: 0.5, client_idle_s: 1.0}\n")
    gw = gateway_process("--config", str(config))
    reader, writer = await _connect(gw.url.removeprefix("http://"))
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # and nothing more
    assert await _closed_after(reader, time.monotonic()) < 3.0  # default: 10 s
    writer.close()


async def test_gateway_serve_drops_a_client_that_reads_no_answer(
        gateway_process: Callable[..., Process], tmp_path: Path) -> None:
    """End to end: a non-streaming answer of about 8 MB (embeddings of 1,000 inputs) to a
    client that reads none of it. aiohttp writes it after the app is done, with nothing
    of the gateway's on the stack to time it out."""
    config = tmp_path / "gateway.yaml"
    config.write_text("timeouts: {client_send_s: 0.5}\n")
    gw = gateway_process("--config", str(config))
    token = mint_token(tmp_path / "home", tier="trusted", sub="reader", scopes=())
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(gw.url + "/v1/models") as resp:
        model = (await resp.json())["data"][0]["id"]
    body = orjson.dumps({"model": model, "input": [f"line {i}" for i in range(1000)]})
    reader, writer = await _connect_small_window(gw.url.removeprefix("http://"))
    writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await asyncio.sleep(3)  # the answer is made, then waits on the client
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    got = await _read_all(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200") and length > 6_000_000
    assert got < length
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert [s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "gateway_client_send_timeouts_total"] == [1]
