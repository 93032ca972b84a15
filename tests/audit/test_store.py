from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.audit.record import GENESIS
from gateway.audit.store import AuditStore, QueryFilter, SqliteStore, open_store
from tests.audit.records import T0, make_record


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Each backend in turn (postgres: a real server, see tests/postgres.py)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return tmp_path / "audit.sqlite3"


@pytest.fixture
def store(where: str | Path) -> Iterator[AuditStore]:
    s = open_store(where)
    s.append([make_record(i) for i in range(1, 31)])
    yield s
    s.close()


def test_append_continues_one_chain_across_batches_and_connections(where: str | Path) -> None:
    a = open_store(where)
    first = a.append([make_record(1), make_record(2)])
    b = open_store(where)  # a second writer (another process) shares the chain
    second = b.append([make_record(3)])
    third = a.append([make_record(4)])
    assert [r.seq for r in first + second + third] == [1, 2, 3, 4]
    assert first[0].prev_hash == GENESIS
    assert second[0].prev_hash == first[1].hash
    assert third[0].prev_hash == second[0].hash
    a.close()
    b.close()


def test_wal_mode_and_append_only_triggers(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "audit.sqlite3").append([make_record(1)])
    db = sqlite3.connect(tmp_path / "audit.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET tier = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 1")
    db.close()


def test_query_filters_newest_first(store: AuditStore) -> None:
    got = store.query(QueryFilter(tier="research"), 100, None)
    assert [r.seq for r in got] == sorted((i for i in range(1, 31) if i % 3 == 1), reverse=True)
    assert all(r.record.tier == "research" for r in got)
    got = store.query(QueryFilter(decision="rate_limited"), 100, None)
    assert {r.record.request_id for r in got} == {"req-7", "req-14", "req-21", "req-28"}
    got = store.query(QueryFilter(since=T0 + 100, until=T0 + 150), 100, None)
    assert [r.seq for r in got] == [14, 13, 12, 11, 10]
    got = store.query(QueryFilter(key_id=make_record(3).key_id), 100, 20)
    assert [r.seq for r in got] == [18, 13, 8, 3]


def test_scan_and_rows_are_in_chain_order(store: AuditStore) -> None:
    assert [r.request_id for r in store.scan(T0 + 50, None)][:2] == ["req-5", "req-6"]
    rows = list(store.rows())
    assert [r.seq for r in rows] == list(range(1, 31))
    assert rows[0].columns["request_id"] == "req-1"


def test_readonly_store_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SqliteStore(tmp_path / "missing.sqlite3", readonly=True)
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "x.sqlite3", synchronous="off")


def test_a_new_audit_log_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    """It was created 0644: anyone on the host could read who asked what."""
    old = os.umask(0o022)
    try:
        store = SqliteStore(tmp_path / "home" / "audit.sqlite3")
        store.append([make_record(1)])
        files = sorted(p.name for p in (tmp_path / "home").iterdir())
        assert files == ["audit.sqlite3", "audit.sqlite3-shm", "audit.sqlite3-wal"]
        for name in files:
            assert stat.S_IMODE((tmp_path / "home" / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
        store.close()
    finally:
        os.umask(old)
