"""A real redis-server on loopback, and the limiters under test built on it.

Where redis-server is not installed the Redis tests are skipped, unless
GATEWAY_REQUIRE_REDIS=1 (as in CI), where a missing server is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from gateway.pipeline.ratelimit import Limiter, MemoryLimiter, RedisLimiter
from tests.pipeline.ratelimit.helpers import Clients, RedisServer, free_port


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("GATEWAY_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason}, and GATEWAY_REQUIRE_REDIS=1 requires it")
        pytest.skip(f"{reason}; set GATEWAY_REQUIRE_REDIS=1 to make this a failure")
    server = RedisServer(binary, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[Clients]:
    """Makes clients of the test's server (one per simulated gateway), closed afterwards."""
    made: list[redis.asyncio.Redis] = []

    def make(pool_size: int | None = None) -> redis.asyncio.Redis:
        made.append(redis_server.client(pool_size))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    """Each limiter that keeps the contract, fresh per test."""
    if request.param == "memory":
        memory = MemoryLimiter()
        yield memory
        await memory.close()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = server.client()
    yield RedisLimiter(client, timeout_s=2.0)
    await client.aclose()
