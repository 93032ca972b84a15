"""Rate limits shared by every replica through Redis: exact, whatever the replica count.

Each admission is one EVALSHA of admit.lua and each settlement one of settle.lua, so the
check and the charge are a single atomic step on the server, timed by the server's clock.
Keys are `{prefix}{<key>}:rpm|tpm|tpd|conc`: the braces make the key a hash tag, so a
Redis Cluster keeps one tenant's keys in one slot (a script may only touch one slot).
Every key carries a PEXPIRE; an idle tenant's keys vanish on their own.

The client belongs to the caller (the app opens and closes it). Failures and timeouts are
raised as LimiterUnavailable; FallbackLimiter decides what they mean.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Sequence
from importlib import resources
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

from gateway.pipeline.ratelimit.gcra import RateName
from gateway.pipeline.ratelimit.limits import (
    CONCURRENT_RETRY_S,
    LEASE_S,
    Admission,
    LimiterUnavailable,
    Limits,
    Refusal,
    Ticket,
    admitted,
    check_tokens,
    refused,
    unmetered,
)

log = logging.getLogger("gateway.ratelimit")

_RATES: tuple[RateName, ...] = ("requests", "tokens", "tokens_per_day")  # admit.lua's order


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


class RedisLimiter:
    def __init__(self, client: redis.asyncio.Redis, prefix: str = "gw:rl:",
                 timeout_s: float = 0.25, *, lease_s: float = LEASE_S) -> None:
        self.timeout_s = timeout_s
        self._client = client
        self._prefix = prefix
        self._lease_us = round(lease_s * 1_000_000)
        self._admit = client.register_script(_script("admit.lua"))
        self._settle = client.register_script(_script("settle.lua"))
        self._renew = client.register_script(_script("renew.lua"))

    def keys(self, key: str) -> list[str]:
        """rpm, tpm, tpd and conc keys of `key`, in the scripts' KEYS order."""
        base = f"{self._prefix}{{{key}}}:"
        return [base + "rpm", base + "tpm", base + "tpd", base + "conc"]

    async def admit(self, key: str, limits: Limits, tokens: int) -> Admission:
        check_tokens(tokens)
        if limits.unlimited:
            return unmetered(key, limits, tokens)
        ticket_id = secrets.token_hex(8) if limits.settles else ""
        args: list[int | str] = [
            tokens, limits.requests_per_minute or 0, limits.tokens_per_minute or 0,
            limits.tokens_per_day or 0, limits.concurrent_requests or 0, ticket_id,
            self._lease_us]
        reply = await self._call(self._admit(keys=self.keys(key), args=args))
        allowed, held = int(reply[0]), int(reply[1])
        offsets: dict[str, float] = {}
        waits: dict[Refusal, float] = {}
        too_large: Refusal | None = None
        for i, name in enumerate(_RATES):
            offsets[name] = int(reply[2 + 2 * i]) / 1e6
            wait = int(reply[3 + 2 * i])
            if wait == -1:
                too_large = too_large or name
                waits[name] = offsets[name]
            elif wait > 0:
                waits[name] = wait / 1e6
        if allowed:
            return admitted(Ticket(ticket_id, key, limits, tokens, "redis"), offsets)
        slots = limits.concurrent_requests
        if slots is not None and held >= slots:
            waits["concurrent"] = CONCURRENT_RETRY_S
        return refused(limits, tokens, waits, offsets, too_large)

    async def settle(self, ticket: Ticket, used_tokens: int) -> None:
        check_tokens(used_tokens)
        if not ticket.id:
            return  # nothing was leased: no slot to free, no reservation to true up
        keys = self.keys(ticket.key)
        args: list[int | str] = [ticket.id, ticket.reserved - used_tokens,
                                 ticket.limits.tokens_per_minute or 0,
                                 ticket.limits.tokens_per_day or 0]
        await self._call(self._settle(keys=[keys[1], keys[2], keys[3]], args=args))

    async def renew(self, tickets: Sequence[Ticket]) -> None:
        """One script call per key (a script may touch one Cluster slot only)."""
        by_key: dict[str, list[str]] = {}
        for ticket in tickets:
            if ticket.id:
                by_key.setdefault(ticket.key, []).append(ticket.id)
        for key, ids in by_key.items():
            await self._call(self._renew(keys=[self.keys(key)[3]],
                                         args=[self._lease_us, *ids]))

    async def ping(self) -> None:
        """Raises LimiterUnavailable unless Redis answers within the timeout."""
        await self._call(self._client.ping())

    async def close(self) -> None:
        """Nothing to do: the client is the app's to close."""

    async def _call(self, call: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise LimiterUnavailable(f"redis: {detail}") from exc
