"""Clients too slow to send a request head, or idle too long, lose their connection:
aiohttp times out neither, so a trickle of header bytes held connections until the
process ran out of file descriptors (and then logged every failed accept())."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.protocol import AcceptErrorThrottle, GatewayRunner
from tests.conftest import Process

HEAD_S = 0.5


async def _echo_length(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/", _echo_length)
    runner = GatewayRunner(app, header_timeout_s=HEAD_S, keepalive_timeout=1.5)
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
