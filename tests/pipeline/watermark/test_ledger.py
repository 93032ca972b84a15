"""The provenance ledger: excerpts and edits found, strangers not, retention, async writes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics
from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.ledger import (
    DAY_S,
    MATCH,
    Ledger,
    Prepared,
    Record,
    SqliteStore,
)
from gateway.pipeline.watermark.payload import request_ref, strip_marks
from tests.pipeline.watermark.helpers import edit_words, make_texts, run_filter

NOW = 1_750_000_000.0
TEXTS = make_texts(40, seed=1)


def rid(i: int) -> str:
    return f"{i:016x}" * 2  # like the gateway's uuid4 hex: the first half is the ref


def record(i: int, text: str, created: float = NOW, store_text: bool = False) -> Record:
    return Record(request_id=rid(i), key_id=f"{i:016x}", tier="public", model="m",
                  created=created, policy_version="v1", word_hashes=tuple(fp.word_hashes(text)),
                  text=text if store_text else None)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """The same behaviour from both stores (postgres: a real server, see tests/postgres.py)."""
    where = (request.getfixturevalue("postgres_url") if request.param == "postgres"
             else tmp_path / "ledger.sqlite3")
    led = Ledger.at(where)
    led.open()
    led.write([record(i, t) for i, t in enumerate(TEXTS)])
    yield led
    led.store.close()


def excerpt(text: str, start: int, n: int = 60) -> str:
    return " ".join(text.split()[start:start + n])


def test_verbatim_excerpts_and_marked_or_stripped_copies_match(ledger: Ledger) -> None:
    for i in (0, 7, 39):
        marked, _ = run_filter(TEXTS[i])
        for query in (excerpt(TEXTS[i], 40), excerpt(marked, 40), strip_marks(marked)):
            top = ledger.match(query, limit=3)[0]
            assert top.record.request_id == rid(i)
            assert top.similarity >= 0.9


def test_excerpts_with_a_fifth_of_words_edited_still_match(ledger: Ledger) -> None:
    hits = 0
    for i in range(20):
        query = edit_words(excerpt(TEXTS[i], 20 + i, 60), 0.2, seed=i)
        matches = ledger.match(query, limit=1)
        hits += bool(matches and matches[0].record.key_id == f"{i:016x}"
                     and matches[0].similarity >= MATCH)
    assert hits >= 18


def test_text_never_produced_does_not_match(ledger: Ledger) -> None:
    for text in make_texts(20, seed=99):
        matches = ledger.match(text)
        assert not matches or matches[0].similarity < MATCH


def test_lookup_by_the_payload_request_ref(ledger: Ledger) -> None:
    ref, _ = request_ref(rid(7))
    (found,) = ledger.lookup(ref)
    assert found.request_id == rid(7) and found.text is None
    assert ledger.lookup(b"\xff" * 8) == []


def test_text_is_kept_only_when_asked(tmp_path: Path) -> None:
    led = Ledger.sqlite(tmp_path / "l.sqlite3")
    led.open()
    led.write([record(1, TEXTS[1], store_text=True), record(2, TEXTS[2])])
    assert led.match(TEXTS[1])[0].record.text == TEXTS[1]
    assert led.match(TEXTS[2])[0].record.text is None
    led.store.close()


def _band_tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'bands_%'")
        return sorted(name for (name,) in rows)


def test_retention_deletes_old_records_signatures_and_day_tables(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    led = Ledger.sqlite(path)
    led.open()
    led.write([record(1, TEXTS[1], created=NOW - 40 * DAY_S),
               record(2, TEXTS[2], created=NOW - 31 * DAY_S),
               record(3, TEXTS[3], created=NOW - 2 * DAY_S)])
    assert len(_band_tables(path)) == 3
    assert led.purge(older_than_days=30, now=NOW) == 2
    assert led.store.count() == 1
    assert len(_band_tables(path)) == 1
    assert led.match(TEXTS[1]) == [] and led.match(TEXTS[2]) == []
    assert led.match(TEXTS[3])[0].record.key_id == f"{3:016x}"
    with sqlite3.connect(path) as conn:
        (sigs,) = conn.execute("SELECT COUNT(*) FROM signatures").fetchone()
    assert sigs == len(fp.record_signatures(fp.word_hashes(TEXTS[3])))
    led.store.close()


def _writes(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("gateway_ledger_writes_total", {"result": result}) or 0.0


async def test_submit_is_written_by_the_worker_and_counted(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    led = Ledger.sqlite(tmp_path / "l.sqlite3", Metrics(registry), retention_days=365,
                        retention_interval_s=0.05)
    led.submit(record(0, TEXTS[0]))  # before start: dropped, counted
    await led.start()
    for i in range(1, 6):
        led.submit(record(i, TEXTS[i], created=time.time()))
    await led.flush()
    assert led.match(TEXTS[3])[0].record.key_id == f"{3:016x}"
    await led.close()
    led.submit(record(9, TEXTS[9]))
    assert _writes(registry, "ok") == 5
    assert _writes(registry, "dropped") == 2


class _SlowStore(SqliteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()

    def add(self, batch: Sequence[Prepared]) -> None:
        self.release.wait(5)
        super().add(batch)


async def test_a_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = _SlowStore(tmp_path / "l.sqlite3")
    led = Ledger(store, Metrics(registry), queue_size=2, batch_size=1)
    await led.start()
    started = time.perf_counter()
    for i in range(10):
        led.submit(record(i, TEXTS[i]))
    assert time.perf_counter() - started < 0.5
    store.release.set()
    await led.close()
    assert _writes(registry, "dropped") >= 7
    assert _writes(registry, "ok") + _writes(registry, "dropped") == 10


def test_a_ledger_of_another_fingerprint_scheme_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    led = Ledger.sqlite(path)
    led.open()
    led.store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 'other' WHERE key = 'fingerprint'")
    other = Ledger.sqlite(path)
    with pytest.raises(RuntimeError, match="scheme"):
        other.open()
    other.store.close()


class _CountingStore(SqliteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def add(self, batch: Sequence[Prepared]) -> None:
        self.batches.append(len(batch))
        super().add(batch)


async def test_records_arriving_close_together_are_written_in_one_transaction(
        tmp_path: Path) -> None:
    store = _CountingStore(tmp_path / "l.sqlite3")
    led = Ledger(store, linger_s=0.5)
    await led.start()
    for i in range(5):  # responses finishing a few milliseconds apart
        led.submit(record(i, TEXTS[i]))
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.7)  # past the linger: written without anyone flushing
    assert store.batches == [5]
    led.submit(record(5, TEXTS[5]))
    started = time.perf_counter()
    await led.flush()  # a flush does not wait out the linger
    assert time.perf_counter() - started < 0.4 and store.batches == [5, 1]
    assert led.match(TEXTS[5])[0].record.key_id == f"{5:016x}"
    await led.close()


def test_a_new_ledger_file_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    # QA round 4b: ledger.sqlite3 and its -wal/-shm were created 0644 (umask 022).
    old = os.umask(0o022)
    try:
        led = Ledger.sqlite(tmp_path / "home" / "ledger.sqlite3")
        led.open()
        led.write([record(0, TEXTS[0])])
        files = sorted(p.name for p in (tmp_path / "home").iterdir())
        assert files == ["ledger.sqlite3", "ledger.sqlite3-shm", "ledger.sqlite3-wal"]
        for name in files:
            assert stat.S_IMODE((tmp_path / "home" / name).stat().st_mode) == 0o600, name
        led.store.close()
    finally:
        os.umask(old)


def test_an_existing_ledger_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    sqlite3.connect(path).close()
    path.chmod(0o640)  # the operator's choice (a backup group, say)
    led = Ledger.sqlite(path)
    led.open()
    led.write([record(0, TEXTS[0])])
    led.store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_compare_scores_a_text_against_one_records_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long = make_texts(1, seed=5, words=2500)[0]  # ~100 chunks: past the exhaustive budget
    led = Ledger.sqlite(tmp_path / "ledger.sqlite3")
    led.open()
    led.write([record(0, long), record(1, TEXTS[1])])
    own, other = led.lookup(request_ref(rid(0))[0])[0], led.lookup(request_ref(rid(1))[0])[0]
    windows = fp.query_signatures(fp.word_hashes(long))
    banded = led.compare(windows, own)
    monkeypatch.setattr("gateway.pipeline.watermark.ledger._EXHAUSTIVE", 1 << 30)
    exhaustive = led.compare(windows, own)
    assert banded is not None and exhaustive is not None
    assert max(banded) == max(exhaustive) == 1.0
    assert all(b <= e for b, e in zip(banded, exhaustive, strict=True))
    assert sum(s >= MATCH for s in banded) >= 0.9 * len(windows)
    stranger = led.compare(windows, other)
    assert stranger is not None and max(stranger) < MATCH
    led.purge(0, now=NOW + 10 * DAY_S)  # retention: the fingerprints are gone
    assert led.compare(windows, own) is None
    led.store.close()
