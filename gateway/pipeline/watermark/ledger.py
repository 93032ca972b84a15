"""The provenance ledger: one record per response, fingerprinted so excerpts can be traced.

`Ledger` is the async front: `submit(record)` never blocks (a bounded queue; a full
queue drops the record and counts it), one worker thread fingerprints and writes in
batches (sqlite3 blocks), runs retention every `retention_interval_s`, and `close()`
flushes what is queued. `match(text)` is synchronous and thread-safe: call it through
`asyncio.to_thread` from the event loop.

Storage is behind `LedgerStore`. `SqliteStore` (GATEWAY_HOME/ledger.sqlite3, WAL; a new
file and its -wal/-shm are created 0600, owner only):

    records     id, request_id, request_ref (8-byte ref as in the payload, indexed),
                key_id, tier, model, created (indexed), policy_version, words, chunks,
                text (NULL unless the tier opts in with store_text)
    signatures  chunk (= record id * 1024 + n, the rowid) -> 64 16-bit MinHash values
    bands_<day> (band, hash, chunk), PRIMARY KEY (band, hash, chunk) WITHOUT ROWID:
                the LSH index, one table per UTC day so retention drops whole tables
                instead of scanning an index of hundreds of millions of rows

A query is one index range lookup per (band, hash) per day table, so it stays
milliseconds at millions of records (bench/watermark.py measures it). Retention deletes
records (and their signatures) older than N days precisely, and drops day tables once
the whole day is past the cutoff; band rows left for a deleted record lead nowhere.

`ledger_postgres.PostgresStore` implements `LedgerStore` on PostgreSQL for fleets (bands
in a table partitioned by day); `Ledger.at(location)` opens either.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.payload import request_ref
from gateway.private_files import create_private

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.watermark.ledger")

DAY_S = 86400
CHUNK_SPACE = fp.MAX_CHUNKS  # chunk id = record id * CHUNK_SPACE + chunk number
MAX_CANDIDATES = 300  # chunks scored per query: those sharing the most bands
HOT_KEY_ROWS = 200  # a band value shared by more chunks than this is boilerplate: skipped
MAX_STORED_TEXT = 1 << 20
# Decision thresholds on the estimated Jaccard similarity (calibration: see detect.py).
MATCH = 0.3
POSSIBLE = 0.2


@dataclass(frozen=True, slots=True)
class Record:
    """What the ledger keeps about one response (one choice)."""

    request_id: str
    key_id: str
    tier: str
    model: str
    created: float
    policy_version: str
    word_hashes: tuple[int, ...]  # normalised words, hashed (fingerprint.Tokenizer)
    text: str | None = None  # only when the tier opts in (store_text)


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as read back (no fingerprints)."""

    id: int
    request_id: str
    key_id: str
    tier: str
    model: str
    created: float
    policy_version: str
    words: int
    text: str | None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id, "key_id": self.key_id, "tier": self.tier,
            "model": self.model, "policy_version": self.policy_version, "words": self.words,
            "time": datetime.fromtimestamp(self.created, UTC).isoformat(),
        }
        if self.text is not None:
            out["text"] = self.text
        return out


@dataclass(frozen=True, slots=True)
class Match:
    record: Stored
    similarity: float  # best estimated Jaccard between a query window and a chunk
    chunks: int  # how many of the record's chunks reached the POSSIBLE threshold
    coverage: float = 0.0  # the share of the query's windows matching a chunk (>= MATCH)


@dataclass(slots=True)
class Prepared:
    """A record with its fingerprints computed (the worker thread does this)."""

    record: Record
    signatures: list[bytes] = field(default_factory=list)
    bands: list[list[tuple[int, int]]] = field(default_factory=list)


def prepare(record: Record) -> Prepared:
    sigs = fp.record_signatures(record.word_hashes)
    return Prepared(record, [fp.pack(s) for s in sigs], [fp.band_keys(s) for s in sigs])


class _Closable(Protocol):
    def close(self) -> None: ...


class LedgerStore(Protocol):
    """Where records live. Methods block; the Ledger calls them from threads."""

    def open(self) -> None: ...

    def add(self, batch: Sequence[Prepared]) -> None: ...

    def band_hits(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """(band, hash, chunk) for every stored chunk sharing one of the keys."""
        ...

    def signatures(self, chunks: Iterable[int]) -> dict[int, bytes]: ...

    def records(self, ids: Iterable[int]) -> dict[int, Stored]: ...

    def by_request_ref(self, ref: bytes) -> list[Stored]: ...

    def purge(self, before: float) -> int:
        """Delete records created before `before`; return how many."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    request_ref BLOB NOT NULL,
    key_id TEXT NOT NULL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    policy_version TEXT NOT NULL,
    words INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    text TEXT
);
CREATE INDEX IF NOT EXISTS records_created ON records (created);
CREATE INDEX IF NOT EXISTS records_request_ref ON records (request_ref);
CREATE INDEX IF NOT EXISTS records_key ON records (key_id, created);
CREATE TABLE IF NOT EXISTS signatures (chunk INTEGER PRIMARY KEY, sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_RECORD_COLUMNS = "id, request_id, key_id, tier, model, created, policy_version, words, text"
_MAX_VARS = 900  # SQLite bound parameters per statement, kept well under the limit


def _band_table(day: int) -> str:
    return f"bands_{day:d}"


def _batches(items: Sequence[Any], size: int = _MAX_VARS) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


C = TypeVar("C", bound=_Closable)


class PerThread(Generic[C]):
    """One database connection per thread, made on first use (or again once `usable`
    says the old one is dead); `close()` closes every one made."""

    def __init__(self, connect: Callable[[], C],
                 usable: Callable[[C], bool] = lambda conn: True) -> None:
        self._connect = connect
        self._usable = usable
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[C] = []

    def get(self) -> C:
        old: C | None = getattr(self._local, "conn", None)
        if old is not None and self._usable(old):
            return old
        conn = self._connect()
        self._local.conn = conn
        with self._lock:
            if old in self._conns:
                self._conns.remove(old)
            self._conns.append(conn)
        if old is not None:
            old.close()
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


class SqliteStore:
    """LedgerStore on one SQLite file in WAL mode: one writer, any number of readers."""

    def __init__(self, path: Path, cache_mib: int = 64) -> None:
        self.path = path
        self._cache_kib = cache_mib * 1024
        self._conns = PerThread(self._connect)
        self._tables: set[int] = set()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size=-{self._cache_kib:d}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    def open(self) -> None:
        create_private(self.path)
        conn = self._conn()
        conn.executescript(_SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('fingerprint', ?)", (fp.SCHEME,))
        (scheme,) = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        if scheme != fp.SCHEME:
            raise RuntimeError(f"{self.path} holds fingerprints of scheme {scheme!r}; this "
                               f"gateway computes {fp.SCHEME!r}: use a new ledger file")

    def _ensure_band_table(self, conn: sqlite3.Connection, day: int) -> None:
        if day not in self._tables:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {_band_table(day)} ("
                         "band INTEGER NOT NULL, hash INTEGER NOT NULL, "
                         "chunk INTEGER NOT NULL, PRIMARY KEY (band, hash, chunk)"
                         ") WITHOUT ROWID")
            self._tables.add(day)

    def add(self, batch: Sequence[Prepared]) -> None:
        conn = self._conn()
        bands: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        conn.execute("BEGIN")
        try:
            for item in batch:
                base = self._add_record(conn, item) * CHUNK_SPACE
                rows = bands[int(item.record.created // DAY_S)]
                for n, keys in enumerate(item.bands):
                    rows.extend((band, h, base + n) for band, h in keys)
            for day, rows in bands.items():
                # In key order, so a large batch walks each day's b-tree once.
                rows.sort()
                self._ensure_band_table(conn, day)
                conn.executemany(f"INSERT OR IGNORE INTO {_band_table(day)} (band, hash, chunk) "
                                 "VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _add_record(self, conn: sqlite3.Connection, item: Prepared) -> int:
        rec = item.record
        ref, _ = request_ref(rec.request_id)
        text = rec.text[:MAX_STORED_TEXT] if rec.text is not None else None
        cur = conn.execute(
            "INSERT INTO records (request_id, request_ref, key_id, tier, model, created, "
            "policy_version, words, chunks, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.request_id, ref, rec.key_id, rec.tier, rec.model, rec.created,
             rec.policy_version, len(rec.word_hashes), len(item.signatures), text))
        record_id = int(cur.lastrowid or 0)
        base = record_id * CHUNK_SPACE
        conn.executemany("INSERT INTO signatures (chunk, sig) VALUES (?, ?)",
                         ((base + n, sig) for n, sig in enumerate(item.signatures)))
        return record_id

    def _days(self, conn: sqlite3.Connection) -> list[int]:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                            "AND name LIKE 'bands\\_%' ESCAPE '\\'").fetchall()
        return sorted(int(name[6:]) for (name,) in rows)

    def band_hits(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
        conn = self._conn()
        days = self._days(conn)
        if not days:
            return []
        # The query's keys go into a temporary table joined to each day table on its
        # (band, hash) primary key: one statement, whose text only changes with the days.
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS query_keys "
                     "(band INTEGER NOT NULL, hash INTEGER NOT NULL)")
        conn.execute("DELETE FROM query_keys")
        conn.executemany("INSERT INTO query_keys VALUES (?, ?)", set(keys))
        hits: list[tuple[int, int, int]] = []
        for part in _batches(days, 64):
            sql = " UNION ALL ".join(
                f"SELECT b.band, b.hash, b.chunk FROM query_keys q JOIN {_band_table(d)} b "
                "ON b.band = q.band AND b.hash = q.hash" for d in part)
            hits.extend(conn.execute(sql))
        return hits

    def signatures(self, chunks: Iterable[int]) -> dict[int, bytes]:
        conn, out = self._conn(), dict[int, bytes]()
        for part in _batches(sorted(set(chunks))):
            marks = ",".join("?" * len(part))
            out.update(conn.execute(
                f"SELECT chunk, sig FROM signatures WHERE chunk IN ({marks})", part))
        return out

    def records(self, ids: Iterable[int]) -> dict[int, Stored]:
        conn, out = self._conn(), dict[int, Stored]()
        for part in _batches(sorted(set(ids))):
            marks = ",".join("?" * len(part))
            for row in conn.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM records WHERE id IN ({marks})", part):
                out[row[0]] = Stored(*row)
        return out

    def by_request_ref(self, ref: bytes) -> list[Stored]:
        rows = self._conn().execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE request_ref = ? ORDER BY id", (ref,))
        return [Stored(*row) for row in rows]

    def purge(self, before: float) -> int:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            ids = [i for (i,) in conn.execute("SELECT id FROM records WHERE created < ?",
                                              (before,))]
            conn.executemany("DELETE FROM signatures WHERE chunk BETWEEN ? AND ?",
                             ((i * CHUNK_SPACE, i * CHUNK_SPACE + CHUNK_SPACE - 1)
                              for i in ids))
            conn.execute("DELETE FROM records WHERE created < ?", (before,))
            cutoff_day = int(before // DAY_S)
            for day in self._days(conn):
                if day < cutoff_day:
                    conn.execute(f"DROP TABLE {_band_table(day)}")
                    self._tables.discard(day)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(ids)

    def count(self) -> int:
        (n,) = self._conn().execute("SELECT COUNT(*) FROM records").fetchone()
        return int(n)

    def close(self) -> None:
        self._conns.close()


def chunks_of(words: int) -> int:
    """How many chunks a record of this many words was stored as."""
    return len(fp.chunk_spans(words - 1 if words >= fp.SHINGLE else words))


_EXHAUSTIVE = 16_384  # window x chunk pairs scored one by one (about 30 ms); past that,
# only pairs sharing a band of the stored 16-bit values (as LSH would, in memory)


def window_scores(windows: Sequence[array[int]], chunks: Sequence[array[int]]) -> list[float]:
    """Each (truncated) window's best similarity to any of the chunks."""
    if len(windows) * len(chunks) <= _EXHAUSTIVE:
        return [max(fp.similarity(w, c) for c in chunks) for w in windows]
    index: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, c in enumerate(chunks):
        for key in _bands16(c):
            index[key].append(i)
    scores = []
    for w in windows:
        near = {i for key in _bands16(w) for i in index.get(key, ())}
        scores.append(max((fp.similarity(w, chunks[i]) for i in near), default=0.0))
    return scores


def _bands16(sig: array[int]) -> list[tuple[int, int, int]]:
    return [(b, sig[b * fp.ROWS], sig[b * fp.ROWS + 1]) for b in range(fp.BANDS)]


_STOP = object()


class Ledger:
    """Async writer and synchronous query front over a LedgerStore."""

    def __init__(self, store: LedgerStore, metrics: Metrics | None = None, *,
                 queue_size: int = 10_000, batch_size: int = 256,
                 linger_s: float = 0.05, retention_days: float | None = None,
                 retention_interval_s: float = 3600.0) -> None:
        self.store = store
        self._metrics = metrics
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        # Nobody awaits a ledger write, so the worker waits this long after a record for
        # more to write with it: one transaction per batch, not per response, halves the
        # store's CPU per record (bench in the commit) and wakes the thread less.
        self._linger_s = linger_s
        self._retention_s = retention_days * DAY_S if retention_days else None
        self._retention_interval_s = retention_interval_s
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def sqlite(cls, path: Path, metrics: Metrics | None = None, **options: Any) -> Ledger:
        return cls(SqliteStore(path), metrics, **options)

    @classmethod
    def at(cls, where: str | Path, metrics: Metrics | None = None, **options: Any) -> Ledger:
        """The ledger at a SQLite path or a postgresql:// URL."""
        from gateway.audit.postgres import is_postgres_url

        if isinstance(where, str) and is_postgres_url(where):
            from gateway.pipeline.watermark.ledger_postgres import PostgresStore

            return cls(PostgresStore(where), metrics, **options)
        return cls.sqlite(Path(where), metrics, **options)

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Create the schema (blocking): for synchronous users such as the CLI."""
        self.store.open()

    async def start(self) -> None:
        await asyncio.to_thread(self.store.open)
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        if self._thread is None:
            return
        done = threading.Event()
        await asyncio.to_thread(self._queue.put, done)
        await asyncio.to_thread(done.wait)

    async def close(self) -> None:
        """Write what is queued, stop the worker, close the store."""
        self._closed = True
        if self._thread is not None:
            await asyncio.to_thread(self._queue.put, _STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        await asyncio.to_thread(self.store.close)

    # -- writing ---------------------------------------------------------------------

    def submit(self, record: Record) -> None:
        """Queue a record for writing; never blocks (a full queue drops and counts it)."""
        if self._closed or self._thread is None:
            self._count("dropped")
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._count("dropped")

    def write(self, records: Sequence[Record]) -> None:
        """Synchronous write (CLI, tests, benchmarks): fingerprints and stores now."""
        self.store.add([prepare(r) for r in records])

    def _count(self, result: str, n: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.ledger_writes.labels(result).inc(n)

    def _run(self) -> None:
        next_purge = time.monotonic()
        while True:
            if self._retention_s is not None and time.monotonic() >= next_purge:
                self._purge_safely()
                next_purge = time.monotonic() + self._retention_interval_s
            try:
                item = self._queue.get(timeout=max(0.0, next_purge - time.monotonic())
                                       if self._retention_s is not None else None)
            except queue.Empty:
                continue
            batch: list[Prepared] = []
            waiters: list[threading.Event] = []
            stop = self._take(item, batch, waiters)
            deadline = time.monotonic() + self._linger_s
            while not stop and len(batch) < self._batch_size:
                wait = 0.0 if waiters else deadline - time.monotonic()  # flush: at once
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else \
                        self._queue.get_nowait()
                except queue.Empty:
                    break
                stop = self._take(item, batch, waiters)
            self._write_batch(batch)
            for w in waiters:
                w.set()
            if stop:
                return

    def _take(self, item: object, batch: list[Prepared],
              waiters: list[threading.Event]) -> bool:
        if item is _STOP:
            return True
        if isinstance(item, threading.Event):
            waiters.append(item)
        elif isinstance(item, Record):
            # Fingerprinted as it arrives, between waits for the next record, not all at
            # once when the batch is written: it is pure Python, and the event loop waits
            # for the GIL while this thread holds it (after any socket call, up to the
            # 5 ms switch interval), so one long run of it stalls the loop.
            try:
                batch.append(prepare(item))
            except Exception:
                log.exception("ledger fingerprinting failed; record lost")
                self._count("error")
        return False

    def _write_batch(self, batch: list[Prepared]) -> None:
        if not batch:
            return
        try:
            self.store.add(batch)
        except Exception:
            log.exception("ledger write of %d records failed", len(batch))
            self._count("error", len(batch))
        else:
            self._count("ok", len(batch))

    def _purge_safely(self) -> None:
        assert self._retention_s is not None
        try:
            n = self.store.purge(time.time() - self._retention_s)
        except Exception:
            log.exception("ledger retention failed")
        else:
            if n:
                log.info("ledger retention removed %d records", n)

    def purge(self, older_than_days: float, now: float | None = None) -> int:
        """Delete records older than the given age now (blocking)."""
        now = time.time() if now is None else now
        return self.store.purge(now - older_than_days * DAY_S)

    # -- querying --------------------------------------------------------------------

    def lookup(self, ref: bytes) -> list[Stored]:
        """Records whose request id has this 8-byte ref (a payload's request_ref)."""
        return self.store.by_request_ref(ref)

    def compare(self, windows: Sequence[tuple[int, ...]], record: Stored
                ) -> list[float] | None:
        """Each query window's best similarity to any chunk of one record (blocking), or
        None when the record's fingerprints are gone. Unlike `match`, every chunk is
        scored, not only LSH candidates: this checks a claim about one record."""
        n = chunks_of(record.words)
        stored = self.store.signatures(range(record.id * CHUNK_SPACE,
                                             record.id * CHUNK_SPACE + n))
        if not stored or not windows:
            return None if not stored else []
        return window_scores([fp.truncate(w) for w in windows],
                             [fp.unpack(blob) for blob in stored.values()])

    def match(self, text: str, limit: int = 5) -> list[Match]:
        """Records whose fingerprints resemble the text, best first (blocking)."""
        windows = fp.query_signatures(fp.word_hashes(text))
        return self.match_signatures(windows, limit)

    def match_signatures(self, windows: Sequence[tuple[int, ...]], limit: int = 5
                         ) -> list[Match]:
        if not windows:
            return []
        by_key: dict[tuple[int, int], list[int]] = defaultdict(list)
        for w, sig in enumerate(windows):
            for key in fp.band_keys(sig):
                by_key[key].append(w)
        # For each candidate chunk, the windows it shares a band with (once per band):
        # the more bands a chunk or a (chunk, window) pair shares, the more similar.
        hits = self.store.band_hits(by_key)
        per_key = Counter((band, h) for band, h, _ in hits)
        hot = {key for key, n in per_key.items() if n > HOT_KEY_ROWS}
        shared: dict[int, list[int]] = {}
        for band, h, chunk in hits:
            if hot and (band, h) in hot:
                continue
            seen = shared.get(chunk)
            if seen is None:
                shared[chunk] = list(by_key[(band, h)])
            else:
                seen.extend(by_key[(band, h)])
        ranked = sorted(shared, key=lambda c: len(shared[c]), reverse=True)[:MAX_CANDIDATES]
        sigs = self.store.signatures(ranked)
        short: dict[int, array[int]] = {}
        best: dict[int, float] = {}
        good: dict[int, int] = defaultdict(int)
        covered: dict[int, set[int]] = defaultdict(set)
        for chunk, blob in sigs.items():
            stored = fp.unpack(blob)
            score = 0.0
            rid = chunk // CHUNK_SPACE
            # Every window sharing a band is scored once (a window sharing none is, by
            # the LSH's design, far below MATCH): which of them match gives the coverage.
            for w in dict.fromkeys(shared[chunk]):
                if w not in short:
                    short[w] = fp.truncate(windows[w])
                similar = fp.similarity(short[w], stored)
                score = max(score, similar)
                if similar >= MATCH:
                    covered[rid].add(w)
            best[rid] = max(best.get(rid, 0.0), score)
            if score >= POSSIBLE:
                good[rid] += 1
        top = sorted(best, key=lambda r: (best[r], good[r]), reverse=True)[:limit]
        records = self.store.records(top)
        return [Match(records[r], best[r], good[r], len(covered[r]) / len(windows))
                for r in top if r in records]

