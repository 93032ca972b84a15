"""AuditLog: records in, durable rows out, off the event loop.

    request ends ─► await submit(record) ─► bounded queue ─► writer thread ─► store.append
                          ▲                                   (group commit: one
                          └──────── resolved when committed ◄──  transaction per batch)

`submit` returns True once the record is committed (in SQLite's WAL file), False when
it was dropped or the write failed. So the guarantee is exactly this: if the caller awaits
`submit` before the last byte of the response goes out, a client that saw the end of the
response has a committed record, and killing the process (even SIGKILL) after that point
cannot lose it. Records still queued when the process dies were never acknowledged.
`AuditSettings.acknowledge: queued` trades that for latency: the request path calls
`submit(record, wait=False)`, which returns once the record is queued, so the answer does
not wait for the commit; a crash loses what was queued, a graceful stop (`close`) does not.

While the writer is idle, a record whose request was the only one in flight
(`submit(..., inline=True)`) is committed on the event loop itself instead: one SQLite
transaction of ~50-90 us, against ~0.25 ms and ~150 us of CPU for the round trip
through the writer thread, with nothing else waiting on the loop meanwhile. That
connection never waits for a lock (a write lock held elsewhere sends the record to the
writer) and never checkpoints: every INLINE_RUN-th record goes through the writer, whose
connection does. Only for SQLite with synchronous=NORMAL (no fsync per commit) and
`acknowledge: committed` (with `queued` nobody waits for the commit).

The queue bound counts records not yet committed. When it is full, `overflow="block"`
makes `submit` wait for space: the finishing request holds its slot (and its concurrency
limit) longer, so admission slows to the disk's pace; an admission stage can also shed
load while `saturated`. `overflow="drop"` returns False at once and counts a drop.

Measured on the development VM (2 slow vCPUs, ext4), synchronous=NORMAL: one submitter
~0.2-0.35 ms per awaited submit (p50), 2-2.3k records/s; 256 concurrent submitters
8-12k records/s through group commit. synchronous=FULL: 0.7-4 ms p50 alone, 7-10k/s
with 256 submitters.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.audit.postgres import is_postgres_url
from gateway.audit.record import AuditRecord, ChainedRecord
from gateway.audit.store import SYNCHRONOUS, AuditStore, QueryFilter, SqliteStore, open_store

log = logging.getLogger("gateway.audit")

OVERFLOW = ("block", "drop")
ON_ERROR = ("fail_open", "fail_closed")
ACKNOWLEDGE = ("committed", "queued")
MAX_PAGE = 1000
DROP_LOG_S = 10.0  # drops in a burst: one log line, not one per record
# With acknowledge: queued nobody waits for a commit, so the writer gathers records this
# long before committing: fewer, larger transactions. Unbatched, each record was its own
# commit under load, which cost more CPU per request than the wait it saved.
QUEUED_LINGER_S = 0.005
# Inline commits in a row before one goes through the writer thread, so that its
# connection checkpoints the WAL (~5 pages a commit; it checkpoints past 1,000).
INLINE_RUN = 100


@dataclass(frozen=True, slots=True)
class AuditSettings:
    path: Path = Path("audit.sqlite3")  # relative paths are under GATEWAY_HOME
    queue_size: int = 10_000  # records submitted but not yet committed
    overflow: str = "block"  # block | drop
    store_prompts: bool = False  # master switch; a tier must opt in as well
    synchronous: str = "normal"  # normal | full (see SqliteStore)
    batch_size: int = 512  # most records per transaction
    url: str | None = None  # postgresql://...: one log shared by every replica (postgres.py)
    # A record that could not be committed (write failed, or dropped): fail_open serves the
    # answer anyway (counted, logged, alerted on); fail_closed withholds it with a 503 (a
    # stream ends with an error event instead of [DONE]).
    on_error: str = "fail_open"
    # When a request's record counts as written, for the answer: `committed` (in the store
    # before the last byte of the response goes out) or `queued` (in the writer's queue;
    # the answer goes out without waiting for the commit, ~0.2 ms sooner unloaded, and a
    # crash loses the records not yet committed: a graceful stop still commits them).
    acknowledge: str = "committed"

    def problems(self) -> list[str]:
        """Validation messages, each starting with the key, for the settings loader."""
        found = []
        if self.overflow not in OVERFLOW:
            found.append(f"overflow: one of {', '.join(OVERFLOW)}")
        if self.on_error not in ON_ERROR:
            found.append(f"on_error: one of {', '.join(ON_ERROR)}")
        if self.acknowledge not in ACKNOWLEDGE:
            found.append(f"acknowledge: one of {', '.join(ACKNOWLEDGE)}")
        elif self.acknowledge == "queued" and self.on_error == "fail_closed":
            found.append("acknowledge: queued sends answers before their records are "
                         "committed, so on_error: fail_closed could not withhold them; "
                         "use committed, or on_error: fail_open")
        if self.synchronous not in SYNCHRONOUS:
            found.append(f"synchronous: one of {', '.join(SYNCHRONOUS)}")
        if self.queue_size < 1:
            found.append("queue_size: must be at least 1")
        if self.batch_size < 1:
            found.append("batch_size: must be at least 1")
        if self.url is not None and not is_postgres_url(self.url):
            found.append("url: expected a postgresql:// URL")
        return found

    def resolve(self, home: Path) -> Path:
        return self.path if self.path.is_absolute() else home / self.path

    def location(self, home: Path) -> str | Path:
        """Where the log lives: the Postgres URL when set, else the SQLite file."""
        return self.url if self.url is not None else self.resolve(home)


class StoreOpener(Protocol):
    def __call__(self, readonly: bool) -> AuditStore:
        """A new store; the writer thread opens one, each query opens a read-only one."""
        ...


Callback = Callable[[int], None]


def _ignore(n: int) -> None:
    pass


_Item = tuple[AuditRecord, "asyncio.Future[bool]", bool]  # record, outcome, holds a slot


class AuditLog:
    """The decision log. start() before use, close() to flush; submit from the loop only."""

    def __init__(self, settings: AuditSettings, home: Path, *,
                 on_written: Callback = _ignore, on_dropped: Callback = _ignore,
                 on_failed: Callback = _ignore, opener: StoreOpener | None = None) -> None:
        if settings.problems():
            raise ValueError("; ".join(settings.problems()))
        self.settings = settings
        self.path = settings.resolve(home)
        self.location = settings.location(home)
        self._open = opener or self._open_default
        self._on_written, self._on_dropped, self._on_failed = on_written, on_dropped, on_failed
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._linger_s = QUEUED_LINGER_S if settings.acknowledge == "queued" else 0.0
        self._inline: SqliteStore | None = None  # the event loop's own connection
        self._inline_run = 0  # inline commits since the writer's last
        self.pending = 0  # submitted, not yet settled: for a queue-depth gauge
        self._unlogged_drops, self._next_drop_log = 0, 0.0

    def _open_default(self, readonly: bool) -> AuditStore:
        return open_store(self.location, synchronous=self.settings.synchronous,
                          readonly=readonly)

    async def start(self) -> None:
        """Open the store (errors surface here) and start the writer thread."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.settings.queue_size)
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        # A daemon thread, so a process that never calls close() can still exit.
        self._thread = threading.Thread(target=self._run, args=(ready,), name="audit-writer",
                                        daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)
        if self.settings.url is None and self.settings.acknowledge == "committed" \
                and self.settings.synchronous == "normal":
            store = self._open(False)  # after the writer's: it created the file
            if isinstance(store, SqliteStore):
                self._inline = store.nonblocking()
            else:  # a test's stand-in
                store.close()

    async def submit(self, record: AuditRecord, *, wait: bool = True,
                     inline: bool = False) -> bool:
        """True once committed; False when dropped (queue full in drop mode, or closed)
        or when the write failed. Cancelling the caller does not withdraw the record.

        wait=False: True once queued (a full queue in block mode is still waited out);
        a write that fails later is counted and logged, not told to the caller.

        inline=True: the caller has nothing else waiting on the loop (its request is the
        only one in flight), so the record may be committed right here (module doc)."""
        if self._slots is None or self._loop is None:
            raise RuntimeError("AuditLog.submit() before start()")
        if self._closed or (self.settings.overflow == "drop" and self._slots.locked()):
            self._drop(1)
            return False
        if inline and wait and self._commit_inline(record):
            return True
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            # The request went away while waiting for space; its record is still owed.
            if self._closed:
                self._drop(1)
            else:
                self._enqueue(record, holds_slot=False)
            raise
        if self._closed:
            self._slots.release()
            self._drop(1)
            return False
        # Cancelling this await cancels only the outcome future; the queued record is
        # still written (and _settle skips outcomes nobody waits for any more).
        outcome = self._enqueue(record, holds_slot=True)
        return await outcome if wait else True

    def _commit_inline(self, record: AuditRecord) -> bool:
        """Commit on the loop's connection; False leaves the record to the writer: while
        it has records (the chain's order is the order of submission), every INLINE_RUN-th
        time, and when the write fails (a lock held elsewhere, a full disk: the writer
        waits for the lock, and counts and logs what fails)."""
        if self._inline is None or self.pending or self._inline_run >= INLINE_RUN:
            return False
        try:
            self._inline.append([record])
        except Exception as exc:
            log.debug("audit record left to the writer: %s", exc)
            return False
        self._inline_run += 1
        self._on_written(1)
        return True

    def _drop(self, n: int) -> None:
        """Count a drop; log them, at most one line per DROP_LOG_S, with how many."""
        self._on_dropped(n)
        self._unlogged_drops += n
        now = time.monotonic()
        if now >= self._next_drop_log:
            log.error("audit records dropped: %d, answers served without their record "
                      "(queue full with overflow: drop, or the log closing)",
                      self._unlogged_drops)
            self._unlogged_drops, self._next_drop_log = 0, now + DROP_LOG_S

    @property
    def saturated(self) -> bool:
        """True while the queue is full: an admission stage may shed load on it."""
        return self._slots is not None and self._slots.locked()

    def _enqueue(self, record: AuditRecord, *, holds_slot: bool) -> asyncio.Future[bool]:
        assert self._loop is not None
        outcome: asyncio.Future[bool] = self._loop.create_future()
        self.pending += 1
        self._inline_run = 0
        self._queue.put((record, outcome, holds_slot))
        return outcome

    async def close(self) -> None:
        """Refuse new records, commit everything queued, stop the writer."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        if self._inline is not None:
            self._inline.close()

    async def query(self, flt: QueryFilter | None = None, *, limit: int = 100,
                    cursor: str | None = None) -> tuple[list[ChainedRecord], str | None]:
        """Newest first. next_cursor is None on the last page. ValueError on a bad cursor."""
        limit = max(1, min(limit, MAX_PAGE))
        before = decode_cursor(cursor) if cursor else None

        def run() -> list[ChainedRecord]:
            store = self._open(True)
            try:
                return store.query(flt or QueryFilter(), limit + 1, before)
            finally:
                store.close()

        found = await asyncio.to_thread(run)
        more = len(found) > limit
        page = found[:limit]
        return page, encode_cursor(page[-1].seq) if more else None

    # writer thread

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            store = self._open(False)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            stop = False
            while not stop:
                item = self._queue.get()
                if item is None:
                    break
                batch = [item]
                if self._linger_s:
                    time.sleep(self._linger_s)  # not woken by each record meanwhile
                while len(batch) < self.settings.batch_size:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                ok = self._write(store, batch)
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._settle, batch, ok)
        finally:
            store.close()

    def _write(self, store: AuditStore, batch: list[_Item]) -> bool:
        try:
            store.append([record for record, _, _ in batch])
        except Exception:
            log.exception("audit write failed; %d records lost", len(batch))
            return False
        return True

    def _settle(self, batch: list[_Item], ok: bool) -> None:
        assert self._slots is not None
        for _, outcome, holds_slot in batch:
            if holds_slot:
                self._slots.release()
            if not outcome.done():
                outcome.set_result(ok)
        self.pending -= len(batch)
        (self._on_written if ok else self._on_failed)(len(batch))


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"a1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, seq = raw.split(":", 1)
        # A row's seq is a SQLite integer (63 bits): a larger one is no cursor we made.
        if tag != "a1" or not seq.isdigit() or len(seq) > 19 or int(seq) >= 1 << 63:
            raise ValueError
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
