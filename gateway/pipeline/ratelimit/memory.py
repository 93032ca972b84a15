"""Rate limits held in this process: exact for one gateway, `limit x replicas` for many.

For a single replica, for tests, and as the fallback that FallbackLimiter divides by the
replica count. Nothing here awaits, so each admit and settle is atomic on the event loop.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from gateway.pipeline.ratelimit import gcra
from gateway.pipeline.ratelimit.limits import (
    CONCURRENT_RETRY_S,
    LEASE_S,
    Admission,
    Limits,
    Refusal,
    Ticket,
    admitted,
    check_tokens,
    refused,
    unmetered,
)

# Idle keys are forgotten on this period, as Redis's PEXPIRE forgets them, so a stream of
# one-off keys cannot grow the table without bound.
_SWEEP_S: Final = 60.0
_NEVER: Final = float("-inf")


@dataclass(slots=True)
class _State:
    tats: dict[str, float] = field(default_factory=dict)  # rate name -> TAT (gcra)
    leases: dict[str, float] = field(default_factory=dict)  # open ticket id -> lease expiry

    def held(self, now: float) -> int:
        """Open tickets whose lease has not run out (a request that never settled)."""
        for ticket_id in [t for t, expiry in self.leases.items() if expiry <= now]:
            del self.leases[ticket_id]
        return len(self.leases)

    def idle(self, now: float) -> bool:
        return self.held(now) == 0 and all(tat <= now for tat in self.tats.values())


class MemoryLimiter:
    """Limiter over per-key state in a dict; `clock` is injectable for tests."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 lease_s: float = LEASE_S) -> None:
        self._clock = clock
        self._lease_s = lease_s
        self._states: dict[str, _State] = {}
        self._ids = itertools.count(1)
        self._swept = clock()

    def __len__(self) -> int:
        """Keys currently tracked."""
        return len(self._states)

    async def admit(self, key: str, limits: Limits, tokens: int) -> Admission:
        check_tokens(tokens)
        if limits.unlimited:
            return unmetered(key, limits, tokens)
        now = self._clock()
        self._sweep(now)
        state = self._states.get(key) or _State()
        waits: dict[Refusal, float] = {}
        offsets: dict[str, float] = {}
        charged: dict[str, float] = {}
        too_large: Refusal | None = None
        for rate in limits.rates():
            tat = state.tats.get(rate.name, _NEVER)
            offsets[rate.name] = gcra.offset(tat, now)
            units = rate.units(tokens)
            if units > rate.capacity:
                too_large = too_large or rate.name
                waits[rate.name] = offsets[rate.name]
                continue
            increment = rate.increment(units)
            wait = gcra.wait(tat, now, increment, rate.period)
            if wait > 0:
                waits[rate.name] = wait
            else:
                charged[rate.name] = gcra.charge(tat, now, increment)
        slots = limits.concurrent_requests
        if slots is not None and len(state.leases) >= slots and state.held(now) >= slots:
            waits["concurrent"] = CONCURRENT_RETRY_S
        if waits:
            return refused(limits, tokens, waits, offsets, too_large)
        state.tats.update(charged)
        ticket_id = ""
        if limits.settles:
            ticket_id = str(next(self._ids))
            state.leases[ticket_id] = now + self._lease_s
        self._states[key] = state
        offsets.update((name, tat - now) for name, tat in charged.items())
        return admitted(Ticket(ticket_id, key, limits, tokens, "memory"), offsets)

    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        check_tokens(used_tokens)
        state = self._states.get(ticket.key)
        if state is None or state.leases.pop(ticket.id, None) is None:
            return  # settled already, never leased, or the lease ran out
        delta = ticket.reserved - used_tokens
        if delta == 0:
            return
        now = self._clock()
        for rate in ticket.limits.rates():
            if rate.name == "requests":
                continue  # the request happened: nothing to refund
            tat = state.tats.get(rate.name, _NEVER)
            if delta > 0:
                state.tats[rate.name] = gcra.refund(tat, now, rate.increment(delta))
            else:
                state.tats[rate.name] = gcra.charge(tat, now, rate.increment(-delta))

    async def renew(self, tickets: Sequence[Ticket]) -> None:
        expiry = self._clock() + self._lease_s
        for ticket in tickets:
            state = self._states.get(ticket.key)
            if state is not None and ticket.id in state.leases:
                state.leases[ticket.id] = expiry

    async def close(self) -> None:
        self._states.clear()

    def _sweep(self, now: float) -> None:
        if now - self._swept < _SWEEP_S:
            return
        self._swept = now
        for key in [k for k, state in self._states.items() if state.idle(now)]:
            del self._states[key]
