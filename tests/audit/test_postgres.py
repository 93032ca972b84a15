"""The audit log on a real PostgreSQL server: same contract as SQLite, one chain per fleet."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import aiohttp
import psycopg
import pytest

from gateway.audit.postgres import PostgresStore, redact
from gateway.audit.store import QueryFilter, open_store
from gateway.audit.verify import verify_chain
from tests.audit.records import make_record
from tests.conftest import Server, StartGateway, chat


def test_round_trip_query_scan_and_verify(postgres_url: str) -> None:
    store = open_store(postgres_url)
    assert isinstance(store, PostgresStore)
    first = store.append([make_record(i) for i in range(1, 11)])
    second = store.append([make_record(i) for i in range(11, 21)])
    assert [c.seq for c in first + second] == list(range(1, 21))
    assert second[0].prev_hash == first[-1].hash
    newest = store.query(QueryFilter(tier="public"), limit=3, before_seq=None)
    assert [c.record.tier for c in newest] == ["public"] * 3
    assert [c.seq for c in newest] == sorted((c.seq for c in newest), reverse=True)
    page = store.query(QueryFilter(), limit=5, before_seq=newest[-1].seq)
    assert all(c.seq < newest[-1].seq for c in page)
    assert [r.request_id for r in store.scan(None, None)] == [f"req-{i}" for i in range(1, 21)]
    store.close()
    result = verify_chain(postgres_url)
    assert result.ok and result.checked == 20


def test_writers_in_parallel_build_one_chain(postgres_url: str) -> None:
    def write(offset: int) -> None:
        store = PostgresStore(postgres_url)
        for batch in range(10):
            start = offset + batch * 5
            store.append([make_record(i) for i in range(start, start + 5)])
        store.close()

    threads = [threading.Thread(target=write, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify_chain(postgres_url)
    assert result.ok, result
    assert result.checked == 4 * 10 * 5


def test_history_cannot_be_edited_and_edits_are_caught(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    store.append([make_record(i) for i in range(1, 6)])
    store.close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        for sql in ("UPDATE gateway_audit SET status = 500 WHERE seq = 2",
                    "DELETE FROM gateway_audit WHERE seq = 3"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                db.execute(sql)
        # Whoever owns the database can drop the guard; the chain still tells.
        db.execute("ALTER TABLE gateway_audit DISABLE TRIGGER gateway_audit_no_change")
        db.execute("UPDATE gateway_audit SET body = convert_to(replace(convert_from("
                   "body, 'UTF8'), 'req-3', 'req-X'), 'UTF8') WHERE seq = 3")
    result = verify_chain(postgres_url)
    assert not result.ok and result.broken_seq == 3


def test_readonly_needs_an_existing_log(postgres_url: str) -> None:
    with pytest.raises(FileNotFoundError, match="no audit log"):
        open_store(postgres_url, readonly=True)


def test_passwords_never_reach_messages() -> None:
    url = "postgresql://gw:s3cret-pw@db.internal:5432/audit"
    assert redact(url) == "postgresql://gw:***@db.internal:5432/audit"
    assert redact("postgresql://db/audit") == "postgresql://db/audit"
    with pytest.raises(ConnectionError) as info:
        PostgresStore("postgresql://gw:s3cret-pw@127.0.0.1:1/audit")
    assert "s3cret-pw" not in str(info.value) and "***" in str(info.value)


async def test_gateway_writes_its_audit_log_to_postgres(
        start_gateway: StartGateway, sim: Server, postgres_url: str,
        http: aiohttp.ClientSession) -> None:
    gw = await start_gateway(sim.url, audit={"url": postgres_url})
    for i in range(3):
        async with http.post(gw.url + "/v1/chat/completions", json=chat(f"hi {i}")) as resp:
            assert resp.status == 200
            request_id = resp.headers["x-request-id"]
    async with http.get(gw.url + "/admin/v1/audit", params={"limit": "10"}) as resp:
        assert resp.status == 200
        records = (await resp.json())["records"]
    assert len(records) == 3 and records[0]["request_id"] == request_id
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "audit", "verify", "--db",
                         postgres_url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "3 records, chain intact" in done.stdout
