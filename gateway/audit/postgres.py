"""The audit log in PostgreSQL, for fleets: every replica appends to one chain.

Same contract as `SqliteStore` (see store.py). Writers serialise on a transaction-scoped
advisory lock taken before the chain head is read, so replicas appending at the same
time still build one unbroken chain; the lock is released by the commit. UPDATE and
DELETE are refused by a trigger (whoever drops it to edit history is caught by the hash
chain instead). Read-only stores open their sessions read-only.

Needs the `postgres` extra (psycopg 3); imported by name when a store is opened, so the
gateway without the extra never imports it. Connection URLs carry passwords: only
`redact()` forms of them reach logs and errors.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.audit.record import AuditRecord, ChainedRecord, seal_batch
from gateway.audit.store import INDEXED, QueryFilter, StoredRow, record_from_body, where_clause
from gateway.urls import redact

SCHEMES = ("postgresql", "postgres")
# An arbitrary constant naming "the audit chain head" for pg_advisory_xact_lock.
_CHAIN_LOCK = 0x6761_7564_6974  # "gaudit"

_COPY = ("COPY gateway_audit (seq, time, request_id, key_id, tier, decision, status, body, "
         "prev_hash, hash) FROM STDIN")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_audit (
    seq BIGINT PRIMARY KEY,
    time DOUBLE PRECISION NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    decision TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BYTEA NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gateway_audit_time ON gateway_audit (time);
CREATE INDEX IF NOT EXISTS gateway_audit_key ON gateway_audit (key_id, seq);
CREATE INDEX IF NOT EXISTS gateway_audit_tier ON gateway_audit (tier, seq);
CREATE INDEX IF NOT EXISTS gateway_audit_decision ON gateway_audit (decision, seq);
CREATE OR REPLACE FUNCTION gateway_audit_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS gateway_audit_no_change ON gateway_audit;
CREATE TRIGGER gateway_audit_no_change BEFORE UPDATE OR DELETE ON gateway_audit
FOR EACH ROW EXECUTE FUNCTION gateway_audit_append_only();
"""


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def _scrub(message: str, url: str) -> str:
    """libpq's reason (refused, no such database...), first line, the password masked
    in case a driver ever quotes it."""
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    found = [userinfo.split(":", 1)[1]] if ":" in userinfo else []
    found += parse_qs(parts.query).get("password", [])
    for secret in found:
        for form in (secret, unquote(secret)):
            if form:
                line = line.replace(form, "***")
    return line


def connect(url: str, readonly: bool = False) -> Any:
    """A psycopg connection in autocommit mode (transactions are explicit)."""
    try:
        psycopg: Any = importlib.import_module("psycopg")
    except ImportError:
        raise RuntimeError("a postgresql:// URL needs the `postgres` extra "
                           "(pip install 'gateway[postgres]')") from None
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise ConnectionError(f"cannot connect to {redact(url)}: "
                              f"{_scrub(str(exc), url)}") from None
    if readonly:
        conn.execute("SET default_transaction_read_only = on")
    return conn


def is_broken(conn: Any) -> bool:
    """True once psycopg knows the session is gone (server restart, network cut)."""
    return bool(conn.closed or conn.broken)


class PostgresStore:
    """One connection per store; use one store per thread (as with SqliteStore)."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = redact(url)
        self._url = url
        self._db = connect(url, readonly)
        if readonly:
            found = self._db.execute("SELECT to_regclass('gateway_audit')").fetchone()
            if found is None or found[0] is None:
                self._db.close()
                raise FileNotFoundError(f"no audit log at {self.url}")
        else:
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK,))
                self._db.execute(_SCHEMA)

    def append(self, records: Sequence[AuditRecord]) -> list[ChainedRecord]:
        # The writer thread keeps one store for the gateway's life: a batch that failed
        # with the server gone is counted as failed by AuditLog, and the next batch comes
        # here on a new session. No retry inside: a lost COMMIT reply would write twice.
        if is_broken(self._db):
            self._db = connect(self._url)
        db = self._db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK,))
            head = db.execute("SELECT seq, hash FROM gateway_audit "
                              "ORDER BY seq DESC LIMIT 1").fetchone()
            sealed, rows = seal_batch(records, (int(head[0]), str(head[1])) if head else None)
            # COPY: several times faster than executemany at the writer's batch sizes.
            with db.cursor() as cur, cur.copy(_COPY) as copy:
                for row in rows:
                    copy.write_row(row)
        return sealed

    def query(self, flt: QueryFilter, limit: int, before_seq: int | None) -> list[ChainedRecord]:
        where, params = where_clause(flt, "%s")
        if before_seq is not None:
            where.append("seq < %s")
            params.append(before_seq)
        sql = "SELECT seq, body, prev_hash, hash FROM gateway_audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT %s"
        params.append(limit)
        return [ChainedRecord(int(seq), record_from_body(body), prev, h)
                for seq, body, prev, h in self._db.execute(sql, params).fetchall()]

    def scan(self, since: float | None, until: float | None) -> Iterator[AuditRecord]:
        where, params = where_clause(QueryFilter(since=since, until=until), "%s")
        sql = "SELECT body FROM gateway_audit"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
        with self._db.cursor() as cur:
            cur.execute(sql, params)
            for (body,) in cur:
                yield record_from_body(body)

    def rows(self) -> Iterator[StoredRow]:
        cols = ", ".join(INDEXED)
        sql = f"SELECT seq, body, prev_hash, hash, {cols} FROM gateway_audit ORDER BY seq"
        with self._db.cursor() as cur:
            cur.execute(sql)
            for seq, body, prev, h, *values in cur:
                yield StoredRow(int(seq), bytes(body), str(prev), str(h),
                                dict(zip(INDEXED, values, strict=True)))

    def close(self) -> None:
        self._db.close()
