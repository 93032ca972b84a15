"""What rate limiting does while Redis is down, and how it comes back.

The first store error or timeout switches to the configured fallback:

    fail_closed   refuse everything (refused="store_unavailable", retry after 1 s)
    fail_open     admit everything, counting nothing
    local         a MemoryLimiter in this process, each limit divided by `replicas`
                  (rounded up, at least 1), so the fleet together stays near the limit

A background task then PINGs Redis every `probe_interval_s`; once it answers, settlements
that failed during the outage are replayed (their slots would otherwise stay taken until
the lease ran out) and admissions go back to Redis. No call waits longer than the
primary's timeout, and no store error reaches the caller. An admission that timed out may
still have been charged in Redis; it then holds its slot there until the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Literal

from gateway.pipeline.ratelimit.limits import (
    Admission,
    LimiterUnavailable,
    Limits,
    Ticket,
    unmetered,
)
from gateway.pipeline.ratelimit.memory import MemoryLimiter

if TYPE_CHECKING:  # the `redis` extra: only a configured store imports it
    from gateway.pipeline.ratelimit.redis import RedisLimiter

log = logging.getLogger("gateway.ratelimit")

FallbackMode = Literal["fail_closed", "fail_open", "local"]
Mode = Literal["redis", "fail_closed", "fail_open", "local"]

_STORE_RETRY_S: Final = 1.0
_UNAVAILABLE_MESSAGE: Final = "Rate limits cannot be checked right now; try again in 1s."


class FallbackLimiter:
    def __init__(self, primary: RedisLimiter, mode: FallbackMode, replicas: int = 1,
                 on_mode_change: Callable[[str], None] | None = None, *,
                 on_store_error: Callable[[], None] | None = None,
                 probe_interval_s: float = 1.0, max_pending_settles: int = 10_000) -> None:
        if mode not in ("fail_closed", "fail_open", "local"):
            raise ValueError(f"unknown fallback mode {mode!r}")
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        self._primary = primary
        self._fallback: FallbackMode = mode
        self._replicas = replicas
        self._on_mode_change = on_mode_change
        self._on_store_error = on_store_error  # every failed call, probes included
        self._probe_interval_s = probe_interval_s
        self._local = MemoryLimiter()
        self._divided: dict[Limits, Limits] = {}
        # Oldest first; when full the oldest is dropped and its slot waits out its lease.
        self._pending: deque[tuple[Ticket, int]] = deque(maxlen=max_pending_settles)
        self._healthy = True
        self._recovery: asyncio.Task[None] | None = None

    @property
    def mode(self) -> Mode:
        return "redis" if self._healthy else self._fallback

    async def admit(self, key: str, limits: Limits, tokens: int) -> Admission:
        if self._healthy:
            try:
                return await self._primary.admit(key, limits, tokens)
            except LimiterUnavailable as exc:
                self._degrade(exc)
        if self._fallback == "fail_closed":
            return Admission(False, "store_unavailable", _STORE_RETRY_S, {}, None,
                             _UNAVAILABLE_MESSAGE)
        if self._fallback == "fail_open":
            return unmetered(key, limits, tokens)
        return await self._local.admit(key, self._local_limits(limits), tokens)

    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        if ticket.source == "memory":
            await self._local.settle(ticket, used_tokens)
        elif ticket.source == "redis" and ticket.id:
            if self._healthy:
                try:
                    await self._primary.settle(ticket, used_tokens)
                    return
                except LimiterUnavailable as exc:
                    self._degrade(exc)
            self._pending.append((ticket, used_tokens))

    async def renew(self, tickets: Sequence[Ticket]) -> None:
        """Each ticket in the store that charged it; Redis's only while it answers (its
        leases outlast a short outage)."""
        await self._local.renew([t for t in tickets if t.source == "memory"])
        shared = [t for t in tickets if t.source == "redis"]
        if shared and self._healthy:
            try:
                await self._primary.renew(shared)
            except LimiterUnavailable as exc:
                self._degrade(exc)

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
            self._recovery = None
        await self._local.close()
        await self._primary.close()

    def _local_limits(self, limits: Limits) -> Limits:
        divided = self._divided.get(limits)
        if divided is None:
            if len(self._divided) > 1024:  # policies have a handful; never grow unbounded
                self._divided.clear()
            divided = self._divided[limits] = limits.divided(self._replicas)
        return divided

    def _store_error(self) -> None:
        if self._on_store_error is not None:
            self._on_store_error()

    def _degrade(self, exc: LimiterUnavailable) -> None:
        self._store_error()
        if not self._healthy:
            return
        self._healthy = False
        log.warning("rate-limit store unavailable (%s); limiting %s until it answers",
                    exc, self._fallback)
        if self._on_mode_change is not None:
            self._on_mode_change(self._fallback)
        if self._recovery is None:
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self._primary.ping()
                await self._replay()
            except LimiterUnavailable:
                self._store_error()
                continue
            break
        self._recovery = None
        self._healthy = True
        log.info("rate-limit store answers again; limiting through it")
        if self._on_mode_change is not None:
            self._on_mode_change("redis")

    async def _replay(self) -> None:
        while self._pending:
            ticket, used = self._pending.popleft()
            try:
                await self._primary.settle(ticket, used)
            except LimiterUnavailable:
                self._pending.appendleft((ticket, used))
                raise
