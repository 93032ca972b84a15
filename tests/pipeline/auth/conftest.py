"""Fixtures: a JWKS provider and a Redis server, both real, on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web


@dataclass
class Provider:
    """An identity provider's JWKS endpoint that can be slowed, broken or stopped."""

    url: str = ""
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    status: int = 200
    delay_s: float = 0.0
    compress: bool = False
    body: bytes | None = None  # served verbatim instead of jwks when set
    requests: list[str] = field(default_factory=list)  # path and query of every request
    runner: web.AppRunner | None = None

    @property
    def hits(self) -> int:
        return len(self.requests)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def _serve(provider: Provider, request: web.Request) -> web.StreamResponse:
    provider.requests.append(request.path_qs)
    if provider.delay_s:
        await asyncio.sleep(provider.delay_s)
    if provider.status != 200:
        return web.Response(status=provider.status, text="identity provider unwell")
    if provider.body is not None:
        return web.Response(body=provider.body, content_type="application/json")
    response = web.json_response(provider.jwks)
    if provider.compress:
        response.enable_compression()
    return response


async def start_provider(provider: Provider) -> Provider:
    async def serve(request: web.Request) -> web.StreamResponse:
        return await _serve(provider, request)

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    app.router.add_get("/attacker/jwks.json", serve)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    provider.url, provider.runner = f"http://{host}:{port}/jwks.json", runner
    return provider


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    started = await start_provider(Provider())
    yield started
    await started.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # As the gateway's own session: no decompression (it relays upstream bytes untouched).
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_port() -> Iterator[int]:
    """A throwaway redis-server on loopback (skipped where none is installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait()
                pytest.fail("redis-server did not start")
            time.sleep(0.02)
    yield port
    proc.terminate()
    proc.wait()
