"""Drain state: readiness fails at once on SIGTERM, in-flight requests finish."""

from __future__ import annotations

import asyncio
import contextlib


class StartupError(RuntimeError):
    """Something the gateway cannot serve without failed to open (an audit log, a ledger):
    `gateway serve` prints the message, which names it, and exits 1 without a traceback."""


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new work and wait for in-flight requests; False if the wait timed out."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self.in_flight == 0
