"""`LedgerStore` on PostgreSQL, for fleets: every replica writes one shared ledger.

The same three parts as the SQLite store (ledger.py), with Postgres' own tools:

    gateway_ledger_records     BIGSERIAL id, the record's columns, btree on created,
                               request_ref and (key_id, created)
    gateway_ledger_signatures  chunk (= record id * CHUNK_SPACE + n) -> packed MinHash
    gateway_ledger_bands       (day, band, hash, chunk), LIST-partitioned by UTC day with a
                               btree on (band, hash) in every partition: a query is an
                               index lookup per key per day, and retention drops whole
                               partitions instead of deleting hundreds of millions of rows

A query sends its keys as two arrays joined with `unnest`, so a detection is one
statement whatever the number of days. One connection per thread (the writer thread and
each detection thread); connections are in autocommit mode with explicit transactions.
Needs the `postgres` extra (psycopg 3); URLs reach messages only through `redact()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gateway.audit.postgres import connect, is_broken
from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.ledger import (
    CHUNK_SPACE,
    DAY_S,
    MAX_STORED_TEXT,
    PerThread,
    Prepared,
    Stored,
)
from gateway.pipeline.watermark.payload import request_ref
from gateway.urls import redact

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_ledger_records (
    id BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    request_ref BYTEA NOT NULL,
    key_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    policy_version TEXT NOT NULL,
    words INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    text TEXT
);
CREATE INDEX IF NOT EXISTS gateway_ledger_created ON gateway_ledger_records (created);
CREATE INDEX IF NOT EXISTS gateway_ledger_ref ON gateway_ledger_records (request_ref);
CREATE INDEX IF NOT EXISTS gateway_ledger_key ON gateway_ledger_records (key_id, created);
CREATE TABLE IF NOT EXISTS gateway_ledger_signatures (
    chunk BIGINT PRIMARY KEY, sig BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_ledger_bands (
    day INTEGER NOT NULL, band INTEGER NOT NULL, hash BIGINT NOT NULL, chunk BIGINT NOT NULL
) PARTITION BY LIST (day);
CREATE INDEX IF NOT EXISTS gateway_ledger_band_key ON gateway_ledger_bands (band, hash);
CREATE TABLE IF NOT EXISTS gateway_ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "id, request_id, key_id, tier, model, created, policy_version, words, text"
_COPY_RECORDS = ("COPY gateway_ledger_records (id, request_id, request_ref, key_id, tier, "
                 "model, created, policy_version, words, chunks, text) FROM STDIN")
# Serialises schema creation across replicas starting together ("gledger").
_SCHEMA_LOCK = 0x676C_6564_6765


def _partition(day: int) -> str:
    return f"gateway_ledger_bands_{day:d}"


def _record_row(record_id: int, item: Prepared) -> tuple[object, ...]:
    rec = item.record
    ref, _ = request_ref(rec.request_id)
    text = rec.text[:MAX_STORED_TEXT] if rec.text is not None else None
    return (record_id, rec.request_id, ref, rec.key_id, rec.tier, rec.model, rec.created,
            rec.policy_version, len(rec.word_hashes), len(item.signatures), text)


class PostgresStore:
    """LedgerStore on PostgreSQL; safe to share between threads (one connection each)."""

    def __init__(self, url: str) -> None:
        self.url = redact(url)
        self._conns: PerThread[Any] = PerThread(lambda: connect(url), lambda c: not is_broken(c))
        self._days: set[int] = set()

    def _conn(self) -> Any:
        # A session lost with the server (the failed call was counted by Ledger) is
        # replaced on the next call.
        return self._conns.get()

    def open(self) -> None:
        conn = self._conn()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(_SCHEMA)
            conn.execute("INSERT INTO gateway_ledger_meta VALUES ('fingerprint', %s) "
                         "ON CONFLICT (key) DO NOTHING", (fp.SCHEME,))
            (scheme,) = conn.execute("SELECT value FROM gateway_ledger_meta "
                                     "WHERE key = 'fingerprint'").fetchone()
        if scheme != fp.SCHEME:
            raise RuntimeError(f"{self.url} holds fingerprints of scheme {scheme!r}; this "
                               f"gateway computes {fp.SCHEME!r}: use a new database")

    def _ensure_partition(self, conn: Any, day: int) -> None:
        if day not in self._days:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                conn.execute(f"CREATE TABLE IF NOT EXISTS {_partition(day)} PARTITION OF "
                             f"gateway_ledger_bands FOR VALUES IN ({day:d})")
            self._days.add(day)

    def add(self, batch: Sequence[Prepared]) -> None:
        # One round trip for the ids, then COPY for each table: per-record INSERTs made
        # the writer thread round-trip-bound (a few hundred records/s).
        conn = self._conn()
        for day in {int(item.record.created // DAY_S) for item in batch}:
            self._ensure_partition(conn, day)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT nextval(pg_get_serial_sequence('gateway_ledger_records', "
                        "'id')) FROM generate_series(1, %s)", (len(batch),))
            ids = [int(row[0]) for row in cur.fetchall()]
            with cur.copy(_COPY_RECORDS) as copy:
                for record_id, item in zip(ids, batch, strict=True):
                    copy.write_row(_record_row(record_id, item))
            with cur.copy("COPY gateway_ledger_signatures (chunk, sig) FROM STDIN") as copy:
                for record_id, item in zip(ids, batch, strict=True):
                    for n, sig in enumerate(item.signatures):
                        copy.write_row((record_id * CHUNK_SPACE + n, sig))
            with cur.copy("COPY gateway_ledger_bands (day, band, hash, chunk) "
                          "FROM STDIN") as copy:
                for record_id, item in zip(ids, batch, strict=True):
                    day = int(item.record.created // DAY_S)
                    for n, keys in enumerate(item.bands):
                        for band, h in keys:
                            copy.write_row((day, band, h, record_id * CHUNK_SPACE + n))

    def band_hits(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
        unique = sorted(set(keys))
        if not unique:
            return []
        bands, hashes = [b for b, _ in unique], [h for _, h in unique]
        rows = self._conn().execute(
            "SELECT b.band, b.hash, b.chunk FROM gateway_ledger_bands b "
            "JOIN unnest(%s::integer[], %s::bigint[]) AS q(band, hash) "
            "ON b.band = q.band AND b.hash = q.hash", (bands, hashes)).fetchall()
        return [(int(b), int(h), int(c)) for b, h, c in rows]

    def signatures(self, chunks: Iterable[int]) -> dict[int, bytes]:
        ids = sorted(set(chunks))
        if not ids:
            return {}
        rows = self._conn().execute(
            "SELECT chunk, sig FROM gateway_ledger_signatures WHERE chunk = ANY(%s)",
            (ids,)).fetchall()
        return {int(c): bytes(s) for c, s in rows}

    def records(self, ids: Iterable[int]) -> dict[int, Stored]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM gateway_ledger_records WHERE id = ANY(%s)",
            (wanted,)).fetchall()
        return {int(row[0]): Stored(*row) for row in rows}

    def by_request_ref(self, ref: bytes) -> list[Stored]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM gateway_ledger_records WHERE request_ref = %s "
            "ORDER BY id", (ref,)).fetchall()
        return [Stored(*row) for row in rows]

    def purge(self, before: float) -> int:
        conn = self._conn()
        cutoff_day = int(before // DAY_S)
        with conn.transaction():
            ids = [int(i) for (i,) in conn.execute(
                "SELECT id FROM gateway_ledger_records WHERE created < %s",
                (before,)).fetchall()]
            if ids:
                conn.execute("DELETE FROM gateway_ledger_signatures s USING "
                             "unnest(%s::bigint[]) AS r(id) WHERE s.chunk >= r.id * %s "
                             "AND s.chunk < (r.id + 1) * %s", (ids, CHUNK_SPACE, CHUNK_SPACE))
                conn.execute("DELETE FROM gateway_ledger_records WHERE created < %s",
                             (before,))
            for (name,) in conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c "
                    "ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                    "WHERE p.relname = 'gateway_ledger_bands'").fetchall():
                day = int(str(name).rsplit("_", 1)[1])
                if day < cutoff_day:
                    conn.execute(f"DROP TABLE {_partition(day)}")
                    self._days.discard(day)
        return len(ids)

    def count(self) -> int:
        (n,) = self._conn().execute("SELECT COUNT(*) FROM gateway_ledger_records").fetchone()
        return int(n)

    def close(self) -> None:
        self._conns.close()
