"""The audit log on a real PostgreSQL server: same contract as SQLite, one chain per fleet."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.audit.cli import run_audit as audit_cli
from gateway.audit.postgres import PostgresStore
from gateway.audit.store import QueryFilter, open_store
from gateway.audit.verify import verify_chain
from tests.audit.records import make_record
from tests.conftest import Server, StartGateway, chat
from tests.report.test_report import _cli as report_cli


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


@pytest.mark.parametrize(("tamper", "broken", "reason"), [
    ("UPDATE gateway_audit SET body = convert_to(replace(convert_from(body, 'UTF8'), "
     "'req-3', 'req-X'), 'UTF8') WHERE seq = 3", 3, "edited"),
    ("DELETE FROM gateway_audit WHERE seq = 3", 4, "3 missing"),
])
def test_history_cannot_be_edited_and_edits_are_caught(
        postgres_url: str, tamper: str, broken: int, reason: str) -> None:
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
        db.execute(tamper)
    result = verify_chain(postgres_url)
    assert not result.ok and result.broken_seq == broken
    assert reason in (result.reason or "")


def test_readonly_needs_an_existing_log(postgres_url: str) -> None:
    with pytest.raises(FileNotFoundError, match="no audit log"):
        open_store(postgres_url, readonly=True)


def test_passwords_never_reach_messages() -> None:
    with pytest.raises(ConnectionError) as info:
        PostgresStore("postgresql://gw:s3cret-pw@127.0.0.1:1/audit")
    assert "s3cret-pw" not in str(info.value) and "***" in str(info.value)


async def test_gateway_writes_its_audit_log_to_postgres(
        start_gateway: StartGateway, sim: Server, postgres_url: str,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
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
    assert "4 records, chain intact" in done.stdout  # the admin query is audited too
    out = tmp_path / "report.html"
    assert report_cli("report", "--db", postgres_url, "--since", "1h", "--out", str(out)) == 0
    assert "<svg" in out.read_text()


def test_clis_name_an_unreachable_store_without_its_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://gw:s3cret-pw@127.0.0.1:1/audit"
    assert report_cli("report", "--db", url, "--out", str(tmp_path / "r.html")) == 2
    assert audit_cli(argparse.Namespace(db=url, anchor=None)) == 2
    err = capsys.readouterr().err
    assert "cannot read the audit log" in err and "gw:***@127.0.0.1:1" in err
    assert "s3cret-pw" not in err


def _audit_counts(text: str) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return {s.labels["result"]: s.value for s in families["gateway_audit_records"].samples
            if s.name == "gateway_audit_records_total"}


async def test_lost_session_is_counted_then_replaced(
        start_gateway: StartGateway, sim: Server, postgres_url: str,
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    # Trust authentication ignores the password: it is here to be kept out of the logs.
    url = postgres_url.replace("gateway@", "gateway:s3cret-pw@")
    gw = await start_gateway(sim.url, audit={"url": url})

    async def request() -> None:
        async with http.post(gw.url + "/v1/chat/completions", json=chat("hi")) as resp:
            assert resp.status == 200  # a failed audit write does not fail the request

    await request()
    with psycopg.connect(postgres_url, autocommit=True) as db:  # as a server restart does
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    await request()  # its batch meets the dead session: counted as an error
    await request()  # a new session
    async with http.get(gw.url + "/metrics") as resp:
        counts = _audit_counts(await resp.text())
    assert counts.get("written") == 2 and counts.get("error") == 1
    assert "audit write failed" in caplog.text and "s3cret-pw" not in caplog.text
    result = await asyncio.to_thread(verify_chain, postgres_url)
    assert result.ok and result.checked == 2
