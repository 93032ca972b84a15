"""Shared by the hardening tests: a real redis-server, and the leak check every fault case
ends with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from gateway.context import UPSTREAM
from tests.conftest import Server, wait_until
from tests.pipeline.auth.conftest import provider  # noqa: F401  (fixtures)
from tests.pipeline.ratelimit.conftest import redis_server  # noqa: F401

# Fake servers written on bare sockets name their per-connection tasks this.
CONNECTION_TASK = "server-connection"


def _work_tasks() -> set[asyncio.Task[object]]:
    """Tasks alive in the loop, less one handler task per open server connection (those are
    counted as connections, and an upstream's idle keep-alive one is no leak) and the
    test's own task."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()
            and getattr(t.get_coro(), "__qualname__", "") != "RequestHandler.start"
            and t.get_name() != CONNECTION_TASK}


@dataclass
class LeakCheck:
    """After a case: no request task, no client connection and no upstream connection is
    left behind. The baseline is taken once the gateway is up and idle."""

    gateway: Server
    runner: web.AppRunner
    baseline: set[asyncio.Task[object]]

    def _acquired(self) -> int:
        return self.gateway.app[UPSTREAM].http.busy  # a stuck relay shows up here

    def _server_connections(self) -> int:
        server = self.runner.server
        assert server is not None
        return len(server.connections)

    async def clean(self, case: str, within: float = 5.0) -> None:
        checks: dict[str, Callable[[], object]] = {
            "upstream connections acquired": self._acquired,
            "client connections open": self._server_connections,
            "tasks beyond the baseline": lambda: [
                t.get_coro() for t in _work_tasks() - self.baseline if not t.done()],
        }
        for what, probe in checks.items():
            try:
                await wait_until(lambda probe=probe: not probe(), within)  # type: ignore[misc]
            except AssertionError:
                raise AssertionError(f"{case}: {what}: {probe()}") from None


MakeLeakCheck = Callable[[Server], LeakCheck]


@pytest.fixture
def leak_check(servers: list[web.AppRunner]) -> MakeLeakCheck:
    def make(gateway: Server) -> LeakCheck:
        runner = next(r for r in servers if r.app is gateway.app)
        return LeakCheck(gateway, runner, _work_tasks())

    return make
