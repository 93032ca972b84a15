"""The signed payload: fields, encoding, survival, forgery, stripping."""

from __future__ import annotations

import json
import unicodedata
from typing import Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.watermark.payload import (
    MARK_LEN,
    encode_mark,
    extract_payloads,
    key_id,
    make_payload,
    policy_ref,
    request_ref,
    strip_marks,
    verify,
)
from tests.pipeline.watermark.helpers import (
    KID,
    MARK,
    OTHER_SECRET,
    PROSE,
    REQUEST_ID,
    SECRET,
    run_filter,
)


def test_key_id_is_keyed_and_does_not_reveal_the_sub() -> None:
    kid = key_id(SECRET, "alice@example.com")
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert "alice" not in kid
    assert kid != key_id(OTHER_SECRET, "alice@example.com")
    assert kid != key_id(SECRET, "bob@example.com")


def test_fields_round_trip() -> None:
    (p,) = extract_payloads("a " + MARK + "b")
    assert p.key_id == KID
    assert p.request_ref == REQUEST_ID[:16] and not p.request_ref_is_hash
    assert p.issued_at == 1_700_000_000
    assert p.policy_ref == "a1b2c3" and not p.policy_ref_is_hash
    assert verify(p, SECRET)
    assert p.as_json()["issued_at"].startswith("2023-11-14T22:13:20")


def test_client_supplied_request_ids_and_odd_versions_are_hashed() -> None:
    ref, is_hash = request_ref("my-request/42 with spaces")
    assert is_hash and len(ref) == 8
    assert request_ref("0123456789ABCDEF0123456789ABCDEF"[:0] + "x" * 128)[1]
    assert request_ref("01234567-89ab-cdef-0123-456789abcdef") == (
        bytes.fromhex("0123456789abcdef"), False)
    assert policy_ref("builtin")[1]
    raw = make_payload(SECRET, KID, "client id", 0, "builtin")
    (p,) = extract_payloads(encode_mark(raw))
    assert p.request_ref_is_hash and p.policy_ref_is_hash and verify(p, SECRET)


def test_every_byte_value_encodes_to_a_selector() -> None:
    raw = bytes([0xB0]) + bytes(range(31))
    mark = encode_mark(raw)
    assert len(mark) == MARK_LEN
    assert all(unicodedata.category(c) == "Mn" for c in mark)
    assert 0xE0100 <= ord(mark[0]) <= 0xE01EF  # first char: a supplementary selector


@pytest.mark.parametrize("form", ["NFC", "NFKC", "NFD", "NFKD"])
def test_marks_survive_unicode_normalisation(form: Literal["NFC", "NFKC", "NFD", "NFKD"]
                                             ) -> None:
    out, _ = run_filter(PROSE)
    normalised = unicodedata.normalize(form, out)
    payloads = extract_payloads(normalised)
    assert [p.key_id for p in payloads] == [KID] and verify(payloads[0], SECRET)


def test_marks_survive_json_both_ways() -> None:
    out, _ = run_filter(PROSE)
    for encoded in (json.dumps({"t": out}), json.dumps({"t": out}, ensure_ascii=False),
                    orjson.dumps({"t": out}).decode()):
        back = json.loads(encoded)["t"]
        assert back == out
        assert extract_payloads(back)[0].key_id == KID


def test_a_forged_or_tampered_payload_fails_verification() -> None:
    raw = bytearray(make_payload(SECRET, KID, REQUEST_ID, 1_700_000_000, "a1b2c3d4"))
    for i in range(1, MARK_LEN):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        (p,) = extract_payloads("x " + encode_mark(bytes(tampered)))
        assert not verify(p, SECRET), i
    forged = make_payload(OTHER_SECRET, KID, REQUEST_ID, 1_700_000_000, "a1b2c3d4")
    (p,) = extract_payloads("x " + encode_mark(forged))
    assert p.key_id == KID and not verify(p, SECRET)


def test_strip_removes_marks_but_keeps_ordinary_selectors() -> None:
    text = "❤️ 葛\U000e0100 a\ufe0e"
    assert strip_marks(text + " " + MARK + "x") == text + " x"
    assert strip_marks(text) == text
    forged = encode_mark(make_payload(OTHER_SECRET, KID, REQUEST_ID, 0, "v"))
    assert strip_marks("a " + forged + "b") == "a b"  # forged marks are marks too
    assert strip_marks("a " + MARK + MARK + "b") == "a b"  # adjacent after an edit


def test_distinct_payloads_are_each_reported_once() -> None:
    other = encode_mark(make_payload(SECRET, key_id(SECRET, "bob"), REQUEST_ID, 5, "v"))
    found = extract_payloads(f"a {MARK}b {other}c {MARK}d")
    assert [p.key_id for p in found] == [KID, key_id(SECRET, "bob")]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_strip_is_the_identity_on_text_without_marks(text: str) -> None:
    assert strip_marks(text) == text
    assert extract_payloads(text) == []


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_a_mark_in_any_text_survives_nfkc_and_json(before: str, after: str) -> None:
    marked = before + " " + MARK + "a" + after
    for copy in (unicodedata.normalize("NFKC", marked), json.loads(json.dumps(marked)),
                 orjson.loads(orjson.dumps(marked))):
        assert KID in [p.key_id for p in extract_payloads(copy) if verify(p, SECRET)]
