from __future__ import annotations

import orjson

from gateway.audit.record import GENESIS, AuditKeys, AuditRecord, canonical, chain_hash, seal
from tests.audit.records import make_record


def test_canonical_form_is_sorted_compact_and_round_trips() -> None:
    record = make_record(13)
    body = canonical(5, record)
    data = orjson.loads(body)
    assert list(data) == sorted(data)
    assert b" " not in body.replace(b"sim-llama", b"")
    assert data["seq"] == 5 and data["v"] == 1
    assert AuditRecord.from_json(data) == record
    assert canonical(5, AuditRecord.from_json(data)) == body


def test_seal_links_to_the_previous_hash() -> None:
    body, first = seal(1, make_record(1), GENESIS)
    assert first.prev_hash == GENESIS
    assert first.hash == chain_hash(GENESIS, body)
    _, second = seal(2, make_record(2), first.hash)
    assert second.prev_hash == first.hash
    assert seal(1, make_record(1), GENESIS)[1].hash == first.hash  # deterministic


def test_keyed_hashes_hide_the_subject_and_depend_on_the_secret() -> None:
    keys, other = AuditKeys(b"s" * 32), AuditKeys(b"t" * 32)
    key_id = keys.key_id("alice@example.com")
    assert "alice" not in key_id and key_id.startswith("k_")
    assert key_id == keys.key_id("alice@example.com")
    assert key_id != keys.key_id("bob@example.com")
    assert key_id != other.key_id("alice@example.com")
    assert keys.prompt_hash("hello") != other.prompt_hash("hello")
    assert keys.prompt_hash("hello") != keys.key_id("hello")


def test_prompt_is_absent_by_default() -> None:
    assert make_record(1).prompt is None
    assert orjson.loads(canonical(1, make_record(1)))["prompt"] is None
