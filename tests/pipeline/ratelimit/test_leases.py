"""Leases are renewed while their requests run: a long stream keeps its slot, a dead
gateway's slots come back within one lease."""

from __future__ import annotations

import asyncio

from gateway.pipeline.ratelimit import Limiter, Limits
from gateway.pipeline.ratelimit.leases import Leasing
from gateway.pipeline.ratelimit.memory import MemoryLimiter
from gateway.pipeline.ratelimit.redis import RedisLimiter
from tests.pipeline.ratelimit.helpers import Clients

LIMITS = Limits(concurrent_requests=1, tokens_per_minute=1000)
LEASE_S = 0.3
SLACK_S = 2.0  # Redis time-out: these tests are about leases, not a slow server


async def _outlives_its_lease(inner: Limiter) -> None:
    limiter = Leasing(inner, interval_s=LEASE_S / 3)
    long = await limiter.admit("t", LIMITS, 500)
    assert long.ticket is not None and limiter.open == 1
    await asyncio.sleep(3 * LEASE_S)  # a request running three leases long
    assert (await limiter.admit("t", LIMITS, 0)).refused == "concurrent"
    await limiter.settle(long.ticket, 100)  # still its own: refunded, slot freed
    assert limiter.open == 0
    again = await limiter.admit("t", LIMITS, 0)
    assert again.allowed
    assert int(again.headers["x-ratelimit-remaining-tokens"]) >= 890  # 400 came back
    await limiter.close()


async def test_an_open_request_keeps_its_slot_past_the_lease_in_memory() -> None:
    await _outlives_its_lease(MemoryLimiter(lease_s=LEASE_S))


async def test_an_open_request_keeps_its_slot_past_the_lease_in_redis(
        clients: Clients) -> None:
    await _outlives_its_lease(RedisLimiter(clients(), timeout_s=SLACK_S, lease_s=LEASE_S))


async def test_a_dead_gateways_slots_come_back_within_a_lease(clients: Clients) -> None:
    """Its leases are no longer renewed; the live gateway's are."""
    dead = Leasing(RedisLimiter(clients(), timeout_s=SLACK_S, lease_s=LEASE_S),
                   interval_s=LEASE_S / 3)
    live = Leasing(RedisLimiter(clients(), timeout_s=SLACK_S, lease_s=LEASE_S),
                   interval_s=LEASE_S / 3)
    limits = Limits(concurrent_requests=2)
    assert (await dead.admit("t", limits, 0)).allowed
    held = await live.admit("t", limits, 0)
    assert held.allowed
    await dead.close()  # as a crash: nothing settled, nothing renewed from now on
    assert (await live.admit("t", limits, 0)).refused == "concurrent"
    await asyncio.sleep(2 * LEASE_S)
    assert (await live.admit("t", limits, 0)).allowed  # the dead one's slot
    assert (await live.admit("t", limits, 0)).refused == "concurrent"  # not the live one's
    assert held.ticket is not None
    await live.settle(held.ticket, 0)
    await live.close()
