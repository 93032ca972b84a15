"""Revocation: the watched deny-list file, a real Redis, and Redis failing."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.errors import Unavailable
from gateway.pipeline.auth.revocation import DenyList, Revocation
from gateway.pipeline.auth.verify import AuthFailure
from tests.pipeline.auth.conftest import free_port
from tests.pipeline.auth.helpers import static_verifier, token


async def until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_file_is_read_and_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("# revoked after the laptop was stolen\njti-1\n\n  jti-2  \n")
    denylist = DenyList(path, poll_s=0.01)
    await denylist.start()
    try:
        assert "jti-1" in denylist and "jti-2" in denylist and len(denylist) == 2
        assert "# revoked after the laptop was stolen" not in denylist
        path.write_text("jti-1\njti-2\njti-3\n")
        await until(lambda: "jti-3" in denylist)
        staged = tmp_path / "revoked.new"  # an atomic replace, as editors and kubelet do
        staged.write_text("jti-4\n")
        staged.replace(path)
        await until(lambda: "jti-4" in denylist and "jti-1" not in denylist)
    finally:
        await denylist.close()


async def test_unchanged_file_is_not_reread(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("jti-1\n")
    denylist = DenyList(path)
    assert await denylist.reload_if_changed()
    assert not await denylist.reload_if_changed()
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert await denylist.reload_if_changed()


async def test_missing_file_then_created_and_then_removed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "revoked.txt"
    denylist = DenyList(path)
    await denylist.start()
    await denylist.close()
    assert len(denylist) == 0 and "does not exist yet" in caplog.text
    path.write_text("jti-1\n")
    assert await denylist.reload_if_changed() and "jti-1" in denylist
    path.unlink()
    assert not await denylist.reload_if_changed()
    assert "jti-1" in denylist and "disappeared" in caplog.text  # fails closed


async def test_revoked_token_is_refused_even_from_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("")
    denylist = DenyList(path)
    verifier = static_verifier(revocation=Revocation(denylist))
    tok = token("ed", jti="stolen")
    await verifier.verify(tok)
    await verifier.verify(tok)
    path.write_text("stolen\n")
    await denylist.reload_if_changed()
    with pytest.raises(AuthFailure, match="revoked"):
        await verifier.verify(tok)
    assert verifier.signature_checks == 1
    await verifier.verify(token("ed", jti=None))  # a token without jti cannot be listed


async def test_redis_set_revokes(redis_port: int) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=redis_port)
    try:
        await client.sadd("gateway:revoked_jti", "stolen")
        revocation = Revocation(None, client, redis_timeout_s=1.0)
        assert await revocation.is_revoked("stolen")
        assert not await revocation.is_revoked("fine")
        assert not await revocation.is_revoked(None)
        verifier = static_verifier(revocation=revocation)
        with pytest.raises(AuthFailure, match="revoked"):
            await verifier.verify(token("ed", jti="stolen"))
    finally:
        await client.aclose()


async def _denylist(tmp_path: Path, *jtis: str) -> DenyList:
    path = tmp_path / "revoked.txt"
    path.write_text("".join(f"{jti}\n" for jti in jtis))
    denylist = DenyList(path)
    await denylist.reload_if_changed()
    return denylist


async def test_redis_down_falls_back_to_the_file(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    denylist = await _denylist(tmp_path, "in-file")
    client = aioredis.Redis(host="127.0.0.1", port=free_port())  # nothing listens there
    try:
        revocation = Revocation(denylist, client, redis_timeout_s=0.1, fail_closed=False)
        assert await revocation.is_revoked("in-file")
        assert not await revocation.is_revoked("elsewhere")
        assert not await revocation.is_revoked("elsewhere-too")
    finally:
        await client.aclose()
    warnings = [r for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(warnings) == 1  # an outage is logged once, not once per request


async def test_redis_down_refuses_by_default(tmp_path: Path) -> None:
    """A revoked token got in whenever Redis was slow, and a client can make it slow by
    loading the gateway: by default an unanswered check is a 503, not a pass."""
    denylist = await _denylist(tmp_path, "in-file")
    client = aioredis.Redis(host="127.0.0.1", port=free_port())  # nothing listens there
    try:
        revocation = Revocation(denylist, client, redis_timeout_s=0.1)
        assert await revocation.is_revoked("in-file")  # the file still answers first
        with pytest.raises(Unavailable) as refused:
            await revocation.is_revoked("elsewhere")
        assert refused.value.http_status == 503
        assert refused.value.headers["Retry-After"] == "1"
    finally:
        await client.aclose()


class SlowRedis:
    """A Redis that hangs (a fake, not a mock: it only does what the seam needs)."""

    calls = 0

    async def sismember(self, name: str, value: str) -> int:
        self.calls += 1
        await asyncio.sleep(10)
        return 1


async def test_slow_redis_times_out_quickly() -> None:
    slow = SlowRedis()
    revocation = Revocation(None, slow, redis_timeout_s=0.05, fail_closed=False)
    started = time.monotonic()
    assert not await revocation.is_revoked("jti")
    assert time.monotonic() - started < 0.5 and slow.calls == 1
    # While it is down, the next requests do not each wait the time-out again.
    started = time.monotonic()
    for _ in range(20):
        assert not await revocation.is_revoked("jti")
    assert time.monotonic() - started < 0.05 and slow.calls == 1
