"""Leases: a concurrency slot is held while its request runs, and only that long.

An admitted request's slot is a lease in the store that runs out LEASE_S after it was
last renewed. `Leasing` wraps the limiter and renews the leases of this process's open
requests every LEASE_S / 3, in one call per key. So a request longer than the lease (an
hour-long stream) keeps its slot, and a gateway that dies without settling frees its
slots, on every replica, within LEASE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from gateway.pipeline.ratelimit.limits import LEASE_S, Admission, Limiter, Limits, Ticket

log = logging.getLogger("gateway.ratelimit")


class Leasing:
    """A Limiter that keeps its open tickets' leases alive; `close` stops and closes."""

    def __init__(self, inner: Limiter, *, interval_s: float = LEASE_S / 3) -> None:
        self.inner = inner
        self._interval_s = interval_s
        self._open: dict[tuple[str, str], Ticket] = {}  # (source, id) -> ticket
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start renewing now (from the event loop), not at the first admission."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._renew_forever(), name="ratelimit-leases")

    @property
    def mode(self) -> str:
        return str(getattr(self.inner, "mode", "memory"))

    async def admit(self, key: str, limits: Limits, tokens: int) -> Admission:
        admission = await self.inner.admit(key, limits, tokens)
        ticket = admission.ticket
        if ticket is not None and ticket.id:
            self._open[ticket.source, ticket.id] = ticket
            self.start()
        return admission

    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        self._open.pop((ticket.source, ticket.id), None)
        await self.inner.settle(ticket, used_tokens)

    async def renew(self, tickets: Sequence[Ticket]) -> None:
        await self.inner.renew(tickets)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.inner.close()

    @property
    def open(self) -> int:
        """Tickets of this process whose requests have not ended."""
        return len(self._open)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if not self._open:
                continue
            try:
                await self.inner.renew(list(self._open.values()))
            except Exception as exc:  # a store that cannot be reached: next round
                log.warning("rate-limit leases not renewed (%s: %s)",
                            type(exc).__name__, exc)
