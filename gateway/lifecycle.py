"""Drain state: readiness fails at once on SIGTERM, in-flight requests finish.

Streams still open when the drain time runs out are not just dropped: each registered
one (`cuttable`) is told to end at once, with an error event the client can read, and
gets a short grace to write it and its audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator


class StartupError(RuntimeError):
    """Something the gateway cannot serve without failed to open (an audit log, a ledger):
    `gateway serve` prints the message, which names it, and exits 1 without a traceback."""


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._cuts: set[Callable[[], None]] = set()

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

    @contextlib.contextmanager
    def cuttable(self, cut: Callable[[], None]) -> Iterator[None]:
        """While inside, `cut()` is how this response is ended early at the drain timeout."""
        self._cuts.add(cut)
        try:
            yield
        finally:
            self._cuts.discard(cut)

    async def cut(self, grace_s: float) -> int:
        """Drain time is up: end every cuttable response now and wait up to `grace_s` for
        them to finish; how many requests are still in flight after that."""
        for cut in list(self._cuts):
            cut()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        return self.in_flight
