"""The gateway's own dependencies failing under it, through the whole gateway: Redis (each
fail mode of the limiter), the identity provider's JWKS, and the audit store. Library-level
tests of the same parts: tests/pipeline/ratelimit/test_fallback.py,
tests/pipeline/auth/test_jwks.py, tests/audit/test_log.py."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.audit.verify import verify_chain
from gateway.context import LIMITER
from tests.conftest import Server, StartGateway, chat
from tests.hardening.conftest import MakeLeakCheck
from tests.hardening.test_faults import Outcome, ask
from tests.pipeline.auth.conftest import Provider
from tests.pipeline.auth.helpers import EC_KEY, ED_KEY, public_jwk, token
from tests.pipeline.ratelimit.helpers import RedisServer

REDIS_TIMEOUT_S = 0.2
ED = public_jwk(ED_KEY, kid="ed", alg="EdDSA", use="sig")
EC = public_jwk(EC_KEY, kid="ec")


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _readiness_mode(gateway: Server) -> str:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/readyz") as resp:
        return str((await resp.json())["detail"]["ratelimit_mode"])


@pytest.mark.parametrize(("mode", "while_down"), [
    ("fail_closed", 503), ("fail_open", 200), ("local", 200)])
async def test_redis_slow_down_and_back(start_gateway: StartGateway, sim: Server,
                                        redis_server: RedisServer, token: str,
                                        leak_check: MakeLeakCheck, mode: str,
                                        while_down: int) -> None:
    # The limiter alone: the revocation check (same Redis) is told to trust the file.
    gateway = await start_gateway(sim.url, redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
                                  ratelimit={"on_store_error": mode,
                                             "redis_timeout_s": REDIS_TIMEOUT_S},
                                  auth={"revocation_on_error": "fail_open",
                                        "revocation_redis_timeout_s": REDIS_TIMEOUT_S})
    assert (await ask(gateway.url, token, chat(max_tokens=2))).status == 200
    assert await _readiness_mode(gateway) == "redis"
    check = leak_check(gateway)

    async def outage(case: str) -> None:
        for _ in range(3):
            outcome = await ask(gateway.url, token, chat(max_tokens=2))
            assert outcome.status == while_down, (case, outcome.body)
            assert outcome.seconds < REDIS_TIMEOUT_S + 1.0, (case, outcome.seconds)  # bounded
            if while_down == 503:  # the store's fault, not a limit the caller reached
                assert b"ratelimit_unavailable" in outcome.body
        assert await _readiness_mode(gateway) == mode, case

    async def recovered() -> bool:
        return await _readiness_mode(gateway) == "redis"

    errors = "gateway_ratelimit_store_errors_total"
    assert _metric(await _metrics(gateway), errors) == 0
    redis_server.freeze()  # slow: connections stay open, nothing answers
    try:
        await outage("frozen")
    finally:
        redis_server.thaw()
    frozen_errors = _metric(await _metrics(gateway), errors)
    assert frozen_errors >= 1  # visible to SREs, not only in the log
    await until(recovered)  # back by itself, with no traffic
    redis_server.stop()  # down: connections refused
    await outage("stopped")
    assert _metric(await _metrics(gateway), errors) > frozen_errors
    redis_server.start()
    await until(recovered)
    assert (await ask(gateway.url, token, chat(max_tokens=2))).status == 200
    assert gateway.app[LIMITER].mode == "redis"  # type: ignore[attr-defined]
    await check.clean(mode)


@pytest.mark.parametrize(("on_store_error", "while_down"), [
    ("fail_closed", 503), ("fail_open", 200)])
async def test_revocation_follows_the_store_error_mode(
        start_gateway: StartGateway, sim: Server, redis_server: RedisServer, token: str,
        on_store_error: str, while_down: int) -> None:
    """A revoked token got in whenever Redis did not answer in time (a client can make it
    slow by loading the gateway). Unless told otherwise the revocation check fails as
    the limiter does: closed is a 503 for tokens with a jti."""
    gateway = await start_gateway(sim.url, redis_url=f"redis://127.0.0.1:{redis_server.port}/0",
                                  ratelimit={"on_store_error": on_store_error,
                                             "redis_timeout_s": REDIS_TIMEOUT_S},
                                  auth={"revocation_redis_timeout_s": REDIS_TIMEOUT_S})
    assert (await ask(gateway.url, token, chat(max_tokens=2))).status == 200
    redis_server.stop()
    outcome = await ask(gateway.url, token, chat(max_tokens=2))
    assert outcome.status == while_down, outcome.body
    if while_down == 503:
        assert b"revocation cannot be checked" in outcome.body
    # Visible to SREs whatever the request got, not only in the log.
    assert _metric(await _metrics(gateway), "gateway_revocation_store_errors_total") >= 1
    redis_server.start()


async def _as(gateway: Server, bearer: str) -> Outcome:
    return await ask(gateway.url, bearer, chat(max_tokens=2))


async def test_jwks_slow_rotated_and_down(start_gateway: StartGateway, sim: Server,
                                          provider: Provider, leak_check: MakeLeakCheck) -> None:
    provider.jwks = {"keys": [ED]}
    gateway = await start_gateway(sim.url, auth={
        "jwks_url": provider.url, "jwks_ttl_s": 0.5, "jwks_refetch_s": 0.2,
        "jwks_timeout_s": 0.5})
    old, new = token("ed", tier="trusted"), token("ec", tier="trusted")
    assert (await _as(gateway, old)).status == 200
    check = leak_check(gateway)

    # Slow: the provider takes longer than jwks_timeout_s. Known keys do not wait for it;
    # an unknown kid waits at most the fetch timeout, then is refused.
    provider.delay_s, provider.jwks = 3.0, {"keys": [ED, EC]}
    assert (await _as(gateway, old)).status == 200
    refused = await _as(gateway, new)
    assert refused.status == 401 and refused.seconds < 2.0, refused
    provider.delay_s = 0.0

    # Rotated: the next key works as soon as a refetch is allowed; the retired one stops
    # working once the key set is refreshed after its TTL.
    async def status_of(bearer: str, wanted: int) -> bool:
        return (await _as(gateway, bearer)).status == wanted

    await until(lambda: status_of(new, 200))
    provider.jwks = {"keys": [EC]}
    await until(lambda: status_of(old, 401))

    # Down: the last good key set keeps serving, past its TTL; unknown kids are refused.
    await provider.stop()
    await asyncio.sleep(0.6)
    assert (await _as(gateway, new)).status == 200
    assert (await _as(gateway, token("rsa", tier="trusted"))).status == 401
    await check.clean("jwks")


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def _metrics(gateway: Server) -> str:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as resp:
        return await resp.text()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process's write transaction on the audit database (a backup tool, an
    operator's shell): the gateway's writer waits, then fails after SQLite's busy time-out."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def _audited(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute("SELECT request_id FROM audit")}
    finally:
        db.close()


async def _traced(gateway: Server, token_: str, request_id: str) -> Outcome:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token_}",
                                              "x-request-id": request_id}) as http:
        started = time.monotonic()
        async with http.post(gateway.url + "/v1/chat/completions",
                             json=chat(max_tokens=2)) as resp:
            body = await resp.read()
        return Outcome(resp.status, [], body, time.monotonic() - started)


async def test_audit_store_locked_with_drop_overflow(start_gateway: StartGateway, sim: Server,
                                                     home: Path, token: str,
                                                     leak_check: MakeLeakCheck) -> None:
    """A full queue drops (and counts) records instead of holding responses back."""
    gateway = await start_gateway(sim.url, audit={"queue_size": 1, "overflow": "drop"})
    assert (await _traced(gateway, token, "warm-up")).status == 200
    check = leak_check(gateway)
    db = home / "audit.sqlite3"
    with locked(db):
        first = asyncio.create_task(_traced(gateway, token, "held"))  # takes the one slot
        await asyncio.sleep(0.3)
        dropped = [await _traced(gateway, token, f"dropped-{i}") for i in range(3)]
        assert [o.status for o in dropped] == [200] * 3
        assert max(o.seconds for o in dropped) < 1.0  # not held back by the store
        assert not first.done()  # its record is owed: the response waits for the commit
    assert (await first).status == 200
    text = await _metrics(gateway)
    assert _metric(text, "gateway_audit_queue_dropped_total") == 3
    assert _metric(text, "gateway_audit_records_total", result="error") == 0
    stored = _audited(db)
    assert {"warm-up", "held"} <= stored and not {f"dropped-{i}" for i in range(3)} & stored
    assert verify_chain(db).ok
    await check.clean("drop")


async def test_audit_store_locked_past_busy_timeout_with_block_overflow(
        start_gateway: StartGateway, sim: Server, home: Path, token: str,
        leak_check: MakeLeakCheck) -> None:
    """A store that stays unwritable: responses wait for it (block), then go out once the
    write has failed, counted as errors; the next records commit when it is writable."""
    gateway = await start_gateway(sim.url, audit={"queue_size": 1, "overflow": "block"})
    assert (await _traced(gateway, token, "warm-up")).status == 200
    check = leak_check(gateway)
    db = home / "audit.sqlite3"
    with locked(db):
        requests = [asyncio.create_task(_traced(gateway, token, f"blocked-{i}"))
                    for i in range(2)]
        await asyncio.sleep(5.5)  # past the writer's busy time-out: one write fails
    outcomes = await asyncio.gather(*requests)
    assert [o.status for o in outcomes] == [200, 200]
    assert min(o.seconds for o in outcomes) > 4.0  # both held while the store was locked
    text = await _metrics(gateway)
    assert _metric(text, "gateway_audit_records_total", result="error") == 1
    assert _metric(text, "gateway_audit_queue_dropped_total") == 0
    assert len(_audited(db) & {"blocked-0", "blocked-1"}) == 1  # the other one committed
    assert (await _traced(gateway, token, "after")).status == 200
    assert "after" in _audited(db) and verify_chain(db).ok
    await check.clean("block")
