"""The durability guarantee, tested as stated: a client that got its response has a
committed record, even when the process is SIGKILLed right after (no close, no flush)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from gateway.audit.store import SqliteStore
from gateway.audit.verify import verify_chain

ROOT = Path(__file__).resolve().parents[2]
REQUESTS, KILL_AFTER, CONCURRENCY = 600, 200, 32


async def test_sigkill_after_responses_loses_no_acknowledged_record(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.audit.audited_server", str(tmp_path), "2", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 20))
        acked: list[str] = []
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            async with slots:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/r?i={i}") as resp:
                        body = await resp.json()
                except (TimeoutError, aiohttp.ClientError):
                    return  # in flight when the process died: never acknowledged
                if body["committed"]:
                    acked.append(f"req-{i}")
                if len(acked) == KILL_AFTER:
                    proc.kill()  # SIGKILL, the instant the response arrived

        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(one(session, i) for i in range(1, REQUESTS + 1)))
        assert await proc.wait() == -9
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert len(acked) >= KILL_AFTER
    assert len(acked) < REQUESTS, "the kill came too late to test anything"
    store = SqliteStore(tmp_path / "audit.sqlite3")  # a restart: opens and recovers the WAL
    stored = {r.request_id for r in store.scan(None, None)}
    store.close()
    assert set(acked) <= stored
    result = verify_chain(tmp_path / "audit.sqlite3")
    assert result.ok and result.checked == len(stored)
