from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from gateway.audit.record import chain_hash
from gateway.audit.store import SqliteStore
from gateway.audit.verify import parse_anchor, verify_chain
from tests.audit.records import N_CHAIN as N
from tests.audit.records import tamper


def body_of(db: sqlite3.Connection, seq: int) -> dict[str, object]:
    data: dict[str, object] = orjson.loads(
        db.execute("SELECT body FROM audit WHERE seq = ?", (seq,)).fetchone()[0])
    return data


def test_intact_chain_verifies(chain_db: Path) -> None:
    result = verify_chain(chain_db)
    assert result.ok and result.checked == N and result.head_seq == N
    assert result.reason is None


def test_empty_log_verifies(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "a.sqlite3").close()
    assert verify_chain(tmp_path / "a.sqlite3").ok


def test_edited_body_is_detected(chain_db: Path) -> None:
    def edit(c: sqlite3.Connection) -> None:
        body = body_of(c, 7) | {"decision": "allow", "status": 200}  # hide a refusal
        c.execute("UPDATE audit SET body = ? WHERE seq = 7",
                  (orjson.dumps(body, option=orjson.OPT_SORT_KEYS),))

    tamper(chain_db, edit)
    result = verify_chain(chain_db)
    assert not result.ok
    assert (result.broken_seq, result.broken_request_id) == (7, "req-7")
    assert "edited" in (result.reason or "") and result.checked == 6


def test_edited_and_resealed_record_breaks_the_next_link(chain_db: Path) -> None:
    def reseal(c: sqlite3.Connection) -> None:
        body = orjson.dumps(body_of(c, 6) | {"tier": "internal"}, option=orjson.OPT_SORT_KEYS)
        prev = c.execute("SELECT prev_hash FROM audit WHERE seq = 6").fetchone()[0]
        c.execute("UPDATE audit SET body = ?, tier = 'internal', hash = ? WHERE seq = 6",
                  (body, chain_hash(prev, body)))

    tamper(chain_db, reseal)
    result = verify_chain(chain_db)
    assert not result.ok and result.broken_seq == 7
    assert "prev_hash" in (result.reason or "")


def test_edited_index_column_is_detected(chain_db: Path) -> None:
    tamper(chain_db, lambda c: c.execute("UPDATE audit SET key_id = 'k_someone' WHERE seq = 3"))
    result = verify_chain(chain_db)
    assert not result.ok and result.broken_seq == 3
    assert "column key_id" in (result.reason or "")


@pytest.mark.parametrize("seq", [1, 10, N - 1])
def test_deleted_record_is_detected(chain_db: Path, seq: int) -> None:
    tamper(chain_db, lambda c: c.execute("DELETE FROM audit WHERE seq = ?", (seq,)))
    result = verify_chain(chain_db)
    assert not result.ok and result.broken_seq == seq + 1
    assert f"{seq} missing" in (result.reason or "")


def test_reordered_records_are_detected(chain_db: Path) -> None:
    cols = "time, request_id, key_id, tier, decision, status, body, prev_hash, hash"

    def swap(c: sqlite3.Connection) -> None:
        five = c.execute(f"SELECT {cols} FROM audit WHERE seq = 5").fetchone()
        six = c.execute(f"SELECT {cols} FROM audit WHERE seq = 6").fetchone()
        sets = ", ".join(f"{name.strip()} = ?" for name in cols.split(","))
        c.execute(f"UPDATE audit SET {sets} WHERE seq = 5", six)
        c.execute(f"UPDATE audit SET {sets} WHERE seq = 6", five)

    tamper(chain_db, swap)
    result = verify_chain(chain_db)
    assert not result.ok and result.broken_seq == 5
    assert "reordered" in (result.reason or "")


def test_truncation_is_caught_only_with_an_anchor(chain_db: Path) -> None:
    anchor = parse_anchor(verify_chain(chain_db).head)
    tamper(chain_db, lambda c: c.execute("DELETE FROM audit WHERE seq > ?", (N - 3,)))
    assert verify_chain(chain_db).ok  # a self-contained chain cannot see a cut tail
    result = verify_chain(chain_db, anchor)
    assert not result.ok and result.broken_seq == N
    assert "cut" in (result.reason or "")


def test_anchor_mismatch_is_reported(chain_db: Path) -> None:
    assert not verify_chain(chain_db, (4, "0" * 64)).ok
    with pytest.raises(ValueError):
        parse_anchor("4:abc")
