"""Where audit records live. The seam is `AuditStore`; SQLite is the default backend.

Every method is synchronous and blocking: the writer thread calls `append`, readers call
the others from a worker thread (`asyncio.to_thread`).

`append` links the batch to the chain inside the same write transaction as the insert, so
two processes sharing one file still produce one consistent chain. `open_store` picks the
backend: a postgresql:// URL opens `PostgresStore` (postgres.py, for fleets), anything
else is a SQLite file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from gateway.audit.record import AuditRecord, ChainedRecord, seal_batch
from gateway.private_files import create_private
from gateway.urls import redact


@dataclass(frozen=True, slots=True)
class QueryFilter:
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    tier: str | None = None
    decision: str | None = None
    key_id: str | None = None
    request_id: str | None = None  # e.g. from `gateway watermark detect` or the ledger


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A row exactly as stored, for the chain verifier: nothing parsed or trusted."""

    seq: int
    body: bytes
    prev_hash: str
    hash: str
    columns: dict[str, object]  # the indexed copies of body fields, which must agree


# The body fields copied into indexed columns so queries need not parse JSON.
INDEXED = ("time", "request_id", "key_id", "tier", "decision", "status")


class AuditStore(Protocol):
    def append(self, records: Sequence[AuditRecord]) -> list[ChainedRecord]:
        """Seal and store the batch atomically, in order, after the current chain head."""
        ...

    def query(self, flt: QueryFilter, limit: int, before_seq: int | None) -> list[ChainedRecord]:
        """Newest first: at most `limit` records with seq < before_seq matching `flt`."""
        ...

    def scan(self, since: float | None, until: float | None) -> Iterator[AuditRecord]:
        """Every record in the time range, oldest first, for reports."""
        ...

    def rows(self) -> Iterator[StoredRow]:
        """Every row in seq order, raw, for `verify_chain`."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    decision TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_key ON audit (key_id, seq);
CREATE INDEX IF NOT EXISTS audit_tier ON audit (tier, seq);
-- Append-only for everyone who goes through SQLite politely; whoever drops these
-- triggers to edit history is caught by the hash chain instead.
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

SYNCHRONOUS = ("normal", "full")


class SqliteStore:
    """SQLite in WAL mode. One connection per store; use one store per thread.

    Durability: a committed transaction is in the WAL file before `append` returns, so
    killing the process (even SIGKILL) loses nothing committed. synchronous=NORMAL skips
    the fsync per commit, so an OS crash or power cut may lose the last commits;
    synchronous=FULL fsyncs each commit (each batch) and survives those too.
    """

    def __init__(self, path: Path, *, synchronous: str = "normal", readonly: bool = False,
                 busy_timeout_ms: int = 5000) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.path = path
        if readonly:
            if not path.exists():
                raise FileNotFoundError(f"no audit database at {path}")
            uri = path.resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            create_private(path)  # who asked, and what was decided: owner-only
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")

    def nonblocking(self) -> SqliteStore:
        """Set up for commits on the event loop: a write lock held elsewhere fails the
        append at once instead of waiting for it, and checkpoints (which fsync) are left
        to the other connections."""
        self._db.execute("PRAGMA busy_timeout=0")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        return self

    def append(self, records: Sequence[AuditRecord]) -> list[ChainedRecord]:
        db = self._db
        # IMMEDIATE takes the write lock before reading the head, so no other writer can
        # slip a record in between and fork the chain.
        db.execute("BEGIN IMMEDIATE")
        try:
            head = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            sealed, rows = seal_batch(records, (int(head[0]), str(head[1])) if head else None)
            db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return sealed

    def query(self, flt: QueryFilter, limit: int, before_seq: int | None) -> list[ChainedRecord]:
        where, params = where_clause(flt)
        if before_seq is not None:
            where.append("seq < ?")
            params.append(before_seq)
        sql = "SELECT seq, body, prev_hash, hash FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        return [ChainedRecord(seq, record_from_body(body), prev, h)
                for seq, body, prev, h in self._db.execute(sql, params)]

    def scan(self, since: float | None, until: float | None) -> Iterator[AuditRecord]:
        where, params = where_clause(QueryFilter(since=since, until=until))
        sql = "SELECT body FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        for (body,) in self._db.execute(sql + " ORDER BY seq", params):
            yield record_from_body(body)

    def rows(self) -> Iterator[StoredRow]:
        cols = ", ".join(INDEXED)
        sql = f"SELECT seq, body, prev_hash, hash, {cols} FROM audit ORDER BY seq"
        for seq, body, prev, h, *values in self._db.execute(sql):
            raw = body if isinstance(body, bytes) else str(body).encode()
            yield StoredRow(seq, raw, str(prev), str(h), dict(zip(INDEXED, values, strict=True)))

    def close(self) -> None:
        self._db.close()


def where_clause(flt: QueryFilter, mark: str = "?") -> tuple[list[str], list[object]]:
    """SQL conditions and parameters for a filter; `mark` is the driver's placeholder."""
    where: list[str] = []
    params: list[object] = []
    for column, op, value in (("time", ">=", flt.since), ("time", "<", flt.until),
                              ("tier", "=", flt.tier), ("decision", "=", flt.decision),
                              ("key_id", "=", flt.key_id),
                              ("request_id", "=", flt.request_id)):
        if value is not None:
            where.append(f"{column} {op} {mark}")
            params.append(value)
    return where, params


def record_from_body(body: bytes) -> AuditRecord:
    return AuditRecord.from_json(orjson.loads(bytes(body)))


def open_store(where: str | Path, *, readonly: bool = False,
               synchronous: str = "normal") -> AuditStore:
    """The store at a SQLite path or a postgresql:// URL."""
    from gateway.audit.postgres import PostgresStore, is_postgres_url

    if isinstance(where, str) and is_postgres_url(where):
        return PostgresStore(where, readonly=readonly)
    return SqliteStore(Path(where), synchronous=synchronous, readonly=readonly)


def describe(where: str | Path) -> str:
    """How to name a store in messages: the path, or the URL without its password."""
    return redact(where) if isinstance(where, str) else str(where)
