from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.log import (
    AuditLog,
    AuditSettings,
    StoreOpener,
    decode_cursor,
    encode_cursor,
)
from gateway.audit.record import AuditRecord, ChainedRecord
from gateway.audit.store import AuditStore, QueryFilter, SqliteStore
from gateway.audit.verify import verify_chain
from tests.audit.records import T0, make_record
from tests.conftest import wait_until


class Counts:
    def __init__(self) -> None:
        self.written = self.dropped = self.failed = 0

    def log(self, settings: AuditSettings, home: Path,
            opener: StoreOpener | None = None) -> AuditLog:
        return AuditLog(settings, home, on_written=self._written, on_dropped=self._dropped,
                        on_failed=self._failed, opener=opener)

    def _written(self, n: int) -> None:
        self.written += n

    def _dropped(self, n: int) -> None:
        self.dropped += n

    def _failed(self, n: int) -> None:
        self.failed += n


class GatedStore(SqliteStore):
    """A store whose writes wait for the test to open the gate: a slow disk on demand."""

    def __init__(self, path: Path, gate: threading.Event, fail: bool = False) -> None:
        super().__init__(path)
        self.gate, self.fail = gate, fail

    def append(self, records: Sequence[AuditRecord]) -> list[ChainedRecord]:
        self.gate.wait(5)
        if self.fail:
            raise OSError("disk full")
        return super().append(records)


def gated(tmp_path: Path, gate: threading.Event, fail: bool = False) -> StoreOpener:
    def opener(readonly: bool) -> AuditStore:
        return SqliteStore(tmp_path / "audit.sqlite3", readonly=True) if readonly else \
            GatedStore(tmp_path / "audit.sqlite3", gate, fail)
    return opener


async def test_submitted_records_are_committed_and_chained(tmp_path: Path) -> None:
    counts = Counts()
    audit = counts.log(AuditSettings(), tmp_path)
    await audit.start()
    results = await asyncio.gather(*(audit.submit(make_record(i)) for i in range(1, 201)))
    assert all(results) and counts.written == 200 and audit.pending == 0
    await audit.close()
    result = verify_chain(tmp_path / "audit.sqlite3")
    assert result.ok and result.checked == 200


async def test_close_flushes_everything_queued(tmp_path: Path) -> None:
    audit = AuditLog(AuditSettings(), tmp_path)
    await audit.start()
    tasks = [asyncio.create_task(audit.submit(make_record(i))) for i in range(1, 101)]
    await asyncio.sleep(0)  # all enqueued, few if any committed yet
    await audit.close()
    assert all(await asyncio.gather(*tasks))
    assert verify_chain(tmp_path / "audit.sqlite3").checked == 100
    assert not await audit.submit(make_record(101))  # closed: dropped, not raised


async def test_overflow_block_waits_for_space(tmp_path: Path) -> None:
    gate, counts = threading.Event(), Counts()
    audit = counts.log(AuditSettings(queue_size=2, overflow="block"), tmp_path,
                       gated(tmp_path, gate))
    await audit.start()
    first = [asyncio.create_task(audit.submit(make_record(i))) for i in (1, 2)]
    third = asyncio.create_task(audit.submit(make_record(3)))
    await asyncio.sleep(0.05)
    assert not third.done() and audit.pending == 2  # back-pressure: the caller waits
    assert audit.saturated
    gate.set()
    assert await asyncio.gather(*first, third) == [True, True, True]
    await audit.close()
    assert counts.dropped == 0 and counts.written == 3


async def test_overflow_drop_refuses_at_once_and_counts(tmp_path: Path) -> None:
    gate, counts = threading.Event(), Counts()
    audit = counts.log(AuditSettings(queue_size=2, overflow="drop"), tmp_path,
                       gated(tmp_path, gate))
    await audit.start()
    first = [asyncio.create_task(audit.submit(make_record(i))) for i in (1, 2)]
    await asyncio.sleep(0)
    assert await audit.submit(make_record(3)) is False
    assert counts.dropped == 1
    gate.set()
    assert await asyncio.gather(*first) == [True, True]
    assert await audit.submit(make_record(4)) is True  # space again
    await audit.close()
    assert counts.written == 3
    assert [r.request_id for r in SqliteStore(tmp_path / "audit.sqlite3").scan(None, None)] \
        == ["req-1", "req-2", "req-4"]


async def test_drops_are_logged_once_per_burst_with_their_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An answer served without its record is an incident: the log says so, but a full
    queue under load does not write one line per request."""
    gate, counts = threading.Event(), Counts()
    audit = counts.log(AuditSettings(queue_size=1, overflow="drop"), tmp_path,
                       gated(tmp_path, gate))
    await audit.start()
    held = asyncio.create_task(audit.submit(make_record(0)))
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        assert [await audit.submit(make_record(i)) for i in range(1, 6)] == [False] * 5
    lines = [r.getMessage() for r in caplog.records]
    assert counts.dropped == 5
    assert lines == ["audit records dropped: 1, answers served without their record (queue "
                     "full with overflow: drop, or the log closing)"]
    gate.set()
    assert await held is True
    await audit.close()


async def test_failed_write_resolves_false_and_counts(tmp_path: Path) -> None:
    gate, counts = threading.Event(), Counts()
    gate.set()
    audit = counts.log(AuditSettings(), tmp_path, gated(tmp_path, gate, fail=True))
    await audit.start()
    assert await audit.submit(make_record(1)) is False
    await audit.close()
    assert counts.failed == 1 and counts.written == 0


class CountingStore(SqliteStore):
    def __init__(self, path: Path, batches: list[int]) -> None:
        super().__init__(path)
        self.batches = batches

    def append(self, records: Sequence[AuditRecord]) -> list[ChainedRecord]:
        self.batches.append(len(records))
        return super().append(records)


async def test_queued_records_are_committed_in_batches_nobody_waits_for(
        tmp_path: Path) -> None:
    """With acknowledge: queued nobody waits for a commit, so the writer gathers what
    arrives over a few milliseconds into one transaction (committed commits a record as
    soon as it comes: someone may be waiting for it)."""
    batches: list[int] = []
    counts = Counts()
    audit = counts.log(AuditSettings(acknowledge="queued"), tmp_path,
                       lambda readonly: CountingStore(tmp_path / "audit.sqlite3", batches))
    await audit.start()
    for i in range(1, 41):  # one record a millisecond, as from requests ending
        assert await audit.submit(make_record(i), wait=False) is True
        await asyncio.sleep(0.001)
    await audit.close()
    assert sum(batches) == 40 and counts.written == 40
    assert len(batches) <= 15, batches
    assert verify_chain(tmp_path / "audit.sqlite3").checked == 40


async def test_a_queued_record_that_fails_later_is_counted(tmp_path: Path) -> None:
    """wait=False returns once the record is queued, even while the store is stuck; a
    write that fails later is counted, not told."""
    gate, counts = threading.Event(), Counts()
    audit = counts.log(AuditSettings(acknowledge="queued"), tmp_path,
                       gated(tmp_path, gate, fail=True))
    await audit.start()
    assert await audit.submit(make_record(1), wait=False) is True  # the store is stuck
    gate.set()
    await audit.close()
    assert counts.failed == 1 and counts.written == 0 and audit.pending == 0


async def test_cancelled_caller_does_not_withdraw_its_record(tmp_path: Path) -> None:
    gate = threading.Event()
    audit = AuditLog(AuditSettings(queue_size=1), tmp_path, opener=gated(tmp_path, gate))
    await audit.start()
    committed = asyncio.create_task(audit.submit(make_record(1)))
    waiting = asyncio.create_task(audit.submit(make_record(2)))  # blocked for space
    await asyncio.sleep(0.02)
    committing = asyncio.create_task(audit.submit(make_record(3)))
    await asyncio.sleep(0.02)
    waiting.cancel()  # the client went away while its request waited
    committed.cancel()  # ... or while its record was being written
    gate.set()
    assert await committing is True
    await audit.close()
    ids = {r.request_id for r in SqliteStore(tmp_path / "audit.sqlite3").scan(None, None)}
    assert ids == {"req-1", "req-2", "req-3"}


def finished_without_waiting(submit: Coroutine[Any, Any, bool]) -> bool | None:
    """The result of a submit that completed without giving the loop back once (an
    inline commit), or None when it had to wait for the writer (the wait is given up;
    the record, already queued, is still written)."""
    try:
        submit.send(None)
    except StopIteration as done:
        return bool(done.value)
    submit.close()
    return None


async def test_a_record_alone_is_committed_on_the_loop(tmp_path: Path) -> None:
    """inline=True while the writer is idle: committed before submit returns, with no
    round trip through the writer thread; wait=False (acknowledge: queued) never is."""
    counts = Counts()
    audit = counts.log(AuditSettings(), tmp_path)
    await audit.start()
    for i in range(1, 4):
        assert finished_without_waiting(audit.submit(make_record(i), inline=True)) is True
    assert counts.written == 3 and audit.pending == 0
    assert await audit.submit(make_record(4), inline=True, wait=False) is True
    assert audit.pending == 1  # queued for the writer, not committed here
    await wait_until(lambda: audit.pending == 0)
    assert finished_without_waiting(audit.submit(make_record(5))) is None
    await audit.close()
    assert counts.written == 5
    assert [r.request_id for r in SqliteStore(tmp_path / "audit.sqlite3").scan(None, None)] \
        == [f"req-{i}" for i in range(1, 6)]
    assert verify_chain(tmp_path / "audit.sqlite3").ok


@pytest.mark.parametrize("settings", [AuditSettings(acknowledge="queued"),
                                      AuditSettings(synchronous="full")])
async def test_no_inline_commit_where_it_would_cost_the_loop(
        tmp_path: Path, settings: AuditSettings) -> None:
    """synchronous=full fsyncs each commit (milliseconds on the loop); with queued the
    writer batches what nobody waits for."""
    audit = AuditLog(settings, tmp_path)
    await audit.start()
    assert finished_without_waiting(audit.submit(make_record(1), inline=True)) is None
    assert await audit.submit(make_record(2), inline=True) is True
    await audit.close()


async def test_an_inline_record_waits_behind_the_writers(tmp_path: Path) -> None:
    """While the writer has records, an inline one joins the queue: the chain keeps the
    order of submission."""
    gate, opened = threading.Event(), []

    def opener(readonly: bool) -> AuditStore:  # the writer's store is gated, not the loop's
        path = tmp_path / "audit.sqlite3"
        opened.append(readonly)
        return GatedStore(path, gate) if len(opened) == 1 else SqliteStore(path)

    audit = AuditLog(AuditSettings(), tmp_path, opener=opener)
    await audit.start()
    first = asyncio.create_task(audit.submit(make_record(1)))
    await asyncio.sleep(0)
    second = asyncio.create_task(audit.submit(make_record(2), inline=True))
    await asyncio.sleep(0.05)
    assert not second.done() and audit.pending == 2
    gate.set()
    assert [await first, await second] == [True, True]
    assert finished_without_waiting(audit.submit(make_record(3), inline=True)) is True
    await audit.close()
    assert [r.request_id for r in SqliteStore(tmp_path / "audit.sqlite3").scan(None, None)] \
        == ["req-1", "req-2", "req-3"]


async def test_an_inline_commit_never_waits_for_a_lock(tmp_path: Path) -> None:
    """Another process holding the write lock: the record goes to the writer, which waits
    for the lock off the loop, at once."""
    counts = Counts()
    audit = counts.log(AuditSettings(), tmp_path)
    await audit.start()
    lock = sqlite3.connect(tmp_path / "audit.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        task = asyncio.create_task(audit.submit(make_record(1), inline=True))
        await asyncio.sleep(0.1)
        assert not task.done() and audit.pending == 1
        # Waiting for the lock would have held the loop for the store's 5 s patience.
        assert time.perf_counter() - started < 2.0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert await task is True
    await audit.close()
    assert counts.written == 1 and counts.failed == 0
    assert verify_chain(tmp_path / "audit.sqlite3").checked == 1


@pytest.mark.parametrize("run", [10, 10**9])
async def test_inline_commits_leave_checkpoints_to_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: int) -> None:
    """The loop's connection never checkpoints (an fsync): left to itself the WAL grows
    by ~5 pages a record. Every INLINE_RUN-th record goes through the writer, whose
    connection checkpoints past 1,000 pages, so the WAL stops growing there."""
    monkeypatch.setattr("gateway.audit.log.INLINE_RUN", run)
    audit = AuditLog(AuditSettings(), tmp_path)
    await audit.start()
    inline = 0
    for i in range(1, 601):
        if finished_without_waiting(audit.submit(make_record(i), inline=True)):
            inline += 1
        else:  # queued: the writer commits it
            await wait_until(lambda: audit.pending == 0)
    wal_pages = (tmp_path / "audit.sqlite3-wal").stat().st_size // 4096
    await audit.close()
    assert inline == 600 - 600 // (run + 1)
    assert (wal_pages < 1500) if run == 10 else (wal_pages > 2500), wal_pages


async def test_start_fails_loudly_and_submit_needs_start(tmp_path: Path) -> None:
    (tmp_path / "audit.sqlite3").mkdir()
    audit = AuditLog(AuditSettings(), tmp_path)
    with pytest.raises(RuntimeError, match="before start"):
        await audit.submit(make_record(1))
    with pytest.raises(Exception, match="unable to open"):
        await audit.start()


def test_settings_are_validated_with_key_names(tmp_path: Path) -> None:
    bad = AuditSettings(overflow="spill", synchronous="off", queue_size=0)
    assert [p.split(":")[0] for p in bad.problems()] == ["overflow", "synchronous",
                                                          "queue_size"]
    with pytest.raises(ValueError, match="overflow"):
        AuditLog(bad, tmp_path)
    assert AuditSettings().resolve(tmp_path) == tmp_path / "audit.sqlite3"
    assert AuditSettings(path=Path("/x/a.db")).resolve(tmp_path) == Path("/x/a.db")


async def test_query_pages_with_an_opaque_cursor(tmp_path: Path) -> None:
    audit = AuditLog(AuditSettings(), tmp_path)
    await audit.start()
    await asyncio.gather(*(audit.submit(make_record(i)) for i in range(1, 51)))
    seen: list[int] = []
    cursor = None
    while True:
        page, cursor = await audit.query(QueryFilter(tier="public"), limit=4, cursor=cursor)
        seen += [r.seq for r in page]
        if cursor is None:
            break
    assert seen == [i for i in range(50, 0, -1) if i % 3 == 0]
    page, cursor = await audit.query(QueryFilter(since=T0 + 100, until=T0 + 120))
    assert [r.record.request_id for r in page] == ["req-11", "req-10"] and cursor is None
    with pytest.raises(ValueError):
        await audit.query(cursor="not-a-cursor")
    await audit.close()


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(1234)) == 1234
    assert decode_cursor(encode_cursor((1 << 63) - 1)) == (1 << 63) - 1
    for bad in ("", "YTE6", "eDox", "YTE6LTE", "%%%", encode_cursor(1 << 63),
                encode_cursor(10**40)):
        with pytest.raises(ValueError):
            decode_cursor(bad)
