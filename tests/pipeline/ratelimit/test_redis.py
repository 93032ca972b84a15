"""RedisLimiter against a real redis-server: shared counts, key layout, expiry, failure."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from gateway.pipeline.ratelimit import LimiterUnavailable, Limits, RedisLimiter
from tests.pipeline.ratelimit.helpers import Clients, RedisServer, free_port

SLACK_S = 2.0  # Redis time-out where a test is not about a slow server


async def _admit_many(limiters: list[RedisLimiter], limits: Limits, tokens: int,
                      total: int) -> int:
    calls = [limiters[n % len(limiters)].admit("shared", limits, tokens) for n in range(total)]
    return sum(admission.allowed for admission in await asyncio.gather(*calls))


@pytest.mark.parametrize(("limits", "tokens", "refill_per_s"), [
    (Limits(requests_per_minute=100), 0, 100 / 60),
    (Limits(tokens_per_minute=1000), 10, 1000 / 60 / 10),
    (Limits(concurrent_requests=100), 0, 0.0),
    (Limits(requests_per_minute=300, tokens_per_day=5000, concurrent_requests=400), 50, 0.0),
])
async def test_two_gateways_share_one_exact_count(clients: Clients, limits: Limits,
                                                  tokens: int, refill_per_s: float) -> None:
    """500 admissions at once through two gateways (each its own client and connections)
    pass exactly 100 times, plus whatever the bucket refilled while they ran."""
    gateways = [RedisLimiter(clients(pool_size=20), timeout_s=10.0) for _ in range(2)]
    started = time.monotonic()
    passed = await _admit_many(gateways, limits, tokens, 500)
    refilled = int((time.monotonic() - started) * refill_per_s)
    assert 100 <= passed <= 100 + refilled


async def test_keys_share_one_cluster_slot_and_all_expire(clients: Clients) -> None:
    client = clients()
    limiter = RedisLimiter(client, timeout_s=SLACK_S, prefix="gw:rl:")
    limits = Limits(requests_per_minute=10, tokens_per_minute=100, concurrent_requests=2,
                    tokens_per_day=1000)
    assert (await limiter.admit("tenant:a", limits, 10)).allowed
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await client.keys("*"))
    assert keys == ["gw:rl:{tenant:a}:conc", "gw:rl:{tenant:a}:rpm", "gw:rl:{tenant:a}:tpd",
                    "gw:rl:{tenant:a}:tpm"]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    for key in keys:
        assert await client.pttl(key) > 0


async def test_idle_keys_vanish_once_their_bucket_is_full(clients: Clients) -> None:
    client = clients()
    limiter = RedisLimiter(client, timeout_s=SLACK_S, lease_s=0.05)
    limits = Limits(requests_per_minute=6000, tokens_per_minute=60_000, concurrent_requests=5)
    admission = await limiter.admit("t", limits, 10)  # 10 ms of each bucket
    assert admission.ticket is not None
    await limiter.settle(admission.ticket, 10)
    ttl = await client.pttl(limiter.keys("t")[0])
    assert ttl == -2 or 0 <= ttl <= 11  # -2: gone already; 0: due this millisecond
    await asyncio.sleep(0.1)
    assert await client.keys("*") == []


async def test_a_lease_outlives_a_crashed_gateway_only_so_long(clients: Clients) -> None:
    limiter = RedisLimiter(clients(), timeout_s=SLACK_S, lease_s=0.1)
    limits = Limits(concurrent_requests=1, tokens_per_minute=1000)
    lost = await limiter.admit("t", limits, 500)
    assert lost.ticket is not None
    assert (await limiter.admit("t", limits, 0)).refused == "concurrent"
    await asyncio.sleep(0.15)
    assert (await limiter.admit("t", limits, 0)).allowed
    await limiter.settle(lost.ticket, 0)  # too late: no refund, the new slot stays taken
    refusal = await limiter.admit("t", limits, 0)
    assert refusal.refused == "concurrent"
    assert 500 <= int(refusal.headers["x-ratelimit-remaining-tokens"]) < 600  # no refund


async def test_time_is_the_servers(clients: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    # A gateway whose clock is an hour off must not see the buckets any differently.
    monkeypatch.setattr(time, "time", lambda: 0.0)
    monkeypatch.setattr(time, "monotonic", lambda: 0.0)
    limiter = RedisLimiter(clients(), timeout_s=SLACK_S)
    limits = Limits(requests_per_minute=2)
    assert (await limiter.admit("t", limits, 0)).allowed
    assert (await limiter.admit("t", limits, 0)).allowed
    assert 29.0 < (await limiter.admit("t", limits, 0)).retry_after_s <= 30.0


async def test_scripts_are_reloaded_after_a_flush(clients: Clients) -> None:
    client = clients()
    limiter = RedisLimiter(client, timeout_s=SLACK_S)
    assert (await limiter.admit("t", Limits(concurrent_requests=1), 0)).allowed
    await client.script_flush()
    assert (await limiter.admit("t", Limits(concurrent_requests=2), 0)).allowed


async def test_a_closed_port_raises_unavailable(redis_server: RedisServer) -> None:
    client = RedisServer(redis_server.binary, free_port()).client()
    limiter = RedisLimiter(client, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        await limiter.admit("t", Limits(requests_per_minute=1), 0)
    with pytest.raises(LimiterUnavailable):
        await limiter.ping()
    assert time.monotonic() - started < 0.6
    await client.aclose()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung Redis."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


async def test_a_hung_server_times_out(redis_server: RedisServer, silent_port: int) -> None:
    client = RedisServer(redis_server.binary, silent_port).client()
    limiter = RedisLimiter(client, timeout_s=0.1)
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable, match="TimeoutError"):
        await limiter.admit("t", Limits(requests_per_minute=1), 0)
    assert time.monotonic() - started < 0.3
    await client.aclose()


async def test_the_gateways_client_reconnects_after_a_redis_restart(
        redis_server: RedisServer) -> None:
    """The first command after a restart met the pooled connection the old server had
    closed, and the limiter declared a healthy store down for a second (its fail mode on
    every replica, after every routine restart). One retry on a fresh connection."""
    from gateway.app import redis_client

    client = redis_client(f"redis://127.0.0.1:{redis_server.port}/0", timeout_s=0.5)
    limiter = RedisLimiter(client, timeout_s=0.5)
    assert (await limiter.admit("t", Limits(requests_per_minute=100), 0)).allowed
    redis_server.stop()
    redis_server.start()
    assert (await limiter.admit("t", Limits(requests_per_minute=100), 0)).allowed
    await client.aclose()
