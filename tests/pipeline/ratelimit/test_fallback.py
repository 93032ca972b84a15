"""FallbackLimiter: each mode while Redis is down, bounded waits, and the way back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from gateway.pipeline.ratelimit import (
    FallbackLimiter,
    FallbackMode,
    Limiter,
    Limits,
    RedisLimiter,
)
from tests.pipeline.ratelimit.helpers import Clients, RedisServer

TIMEOUT_S = 0.2
LIMITS = Limits(requests_per_minute=10)


def _fallback(server: RedisServer, clients: Clients, mode: FallbackMode,
              changes: list[str], replicas: int = 3) -> FallbackLimiter:
    primary = RedisLimiter(clients(), timeout_s=TIMEOUT_S)
    return FallbackLimiter(primary, mode, replicas, changes.append, probe_interval_s=0.05)


def _mode(limiter: FallbackLimiter) -> str:
    return limiter.mode  # read through a call, so that mypy does not pin it after a check


async def _until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("mode", "allowed", "refused"), [
    ("fail_closed", 0, "store_unavailable"),
    ("fail_open", 12, None),
    ("local", 4, "requests"),  # 10 per minute over 3 replicas: 4 here
])
async def test_each_mode_while_redis_is_down(redis_server: RedisServer, clients: Clients,
                                             mode: FallbackMode, allowed: int,
                                             refused: str | None) -> None:
    changes: list[str] = []
    limiter = _fallback(redis_server, clients, mode, changes)
    assert (await limiter.admit("t", LIMITS, 0)).allowed
    assert _mode(limiter) == "redis"
    redis_server.stop()
    answers = []
    for _ in range(12):
        started = time.monotonic()
        answers.append(await limiter.admit("t", LIMITS, 0))
        assert time.monotonic() - started < TIMEOUT_S + 0.25
    assert _mode(limiter) == mode
    assert changes == [mode]
    assert sum(a.allowed for a in answers) == allowed
    assert {a.refused for a in answers if not a.allowed} <= {refused}
    if mode == "fail_closed":
        assert answers[0].retry_after_s == 1.0
        assert "cannot be checked" in answers[0].message
    for answer in answers:
        if answer.ticket is not None:
            await limiter.settle(answer.ticket, 0)  # never raises
    await limiter.close()


async def test_local_mode_divides_every_limit(redis_server: RedisServer,
                                              clients: Clients) -> None:
    changes: list[str] = []
    limiter = _fallback(redis_server, clients, "local", changes, replicas=4)
    redis_server.stop()
    limits = Limits(concurrent_requests=5, tokens_per_minute=1000)
    first = await limiter.admit("t", limits, 250)
    assert first.allowed  # 1000 / 4 = 250 tokens, 5 / 4 -> 2 slots here
    assert (await limiter.admit("t", limits, 1)).refused == "tokens"
    assert (await limiter.admit("t", limits, 0)).allowed
    assert (await limiter.admit("t", limits, 0)).refused == "concurrent"
    assert first.ticket is not None
    await limiter.settle(first.ticket, 0)
    assert (await limiter.admit("t", limits, 250)).allowed
    await limiter.close()


async def test_a_hung_redis_costs_one_timeout(redis_server: RedisServer,
                                              clients: Clients) -> None:
    changes: list[str] = []
    limiter = _fallback(redis_server, clients, "fail_open", changes)
    redis_server.freeze()  # hung, not gone
    try:
        started = time.monotonic()
        assert (await limiter.admit("t", LIMITS, 0)).allowed
        assert TIMEOUT_S - 0.05 < time.monotonic() - started < TIMEOUT_S + 0.25
        started = time.monotonic()
        assert (await limiter.admit("t", LIMITS, 0)).allowed
        assert time.monotonic() - started < 0.1  # no longer asks Redis
    finally:
        redis_server.thaw()
    await _until(lambda: limiter.mode == "redis")
    assert changes == ["fail_open", "redis"]
    await limiter.close()


async def test_returns_to_redis_by_itself(redis_server: RedisServer, clients: Clients) -> None:
    changes: list[str] = []
    limiter = _fallback(redis_server, clients, "local", changes)
    redis_server.stop()
    assert (await limiter.admit("t", LIMITS, 0)).allowed
    assert _mode(limiter) == "local"
    redis_server.start()
    await _until(lambda: limiter.mode == "redis")  # with no traffic at all
    assert changes == ["local", "redis"]
    admission = await limiter.admit("t", LIMITS, 0)
    assert admission.ticket is not None
    assert admission.ticket.source == "redis"
    await limiter.close()


async def test_settles_lost_in_an_outage_are_replayed(redis_server: RedisServer,
                                                      clients: Clients) -> None:
    changes: list[str] = []
    limiter = _fallback(redis_server, clients, "fail_closed", changes)
    limits = Limits(concurrent_requests=1, tokens_per_minute=1000)
    admission = await limiter.admit("t", limits, 600)
    assert admission.ticket is not None
    await clients().client_pause(400, all=True)  # Redis keeps its data but stops answering
    await limiter.settle(admission.ticket, 100)
    assert _mode(limiter) == "fail_closed"
    await _until(lambda: limiter.mode == "redis")
    again = await limiter.admit("t", limits, 900)  # the slot is free and 500 came back
    assert again.allowed, again.message
    await limiter.close()


async def test_close_stops_the_probe(redis_server: RedisServer, clients: Clients) -> None:
    limiter: Limiter = _fallback(redis_server, clients, "fail_open", [])  # keeps the seam
    redis_server.stop()
    await limiter.admit("t", LIMITS, 0)
    await limiter.close()  # a pending probe task would fail the run under filterwarnings
