"""Check the audit chain end to end, from the raw rows, trusting nothing stored.

What it catches: an edited record (its hash no longer matches its contents, or an indexed
column no longer matches the sealed body), a deleted record (a gap in the sequence, or a
prev_hash that no longer links), reordered records (a body sealed for another position).

What no self-contained chain can catch: cutting records off the end, or rewriting the
whole tail and re-sealing it. For that, keep the head an earlier run printed
(`seq:hash`) somewhere else and pass it back as an anchor: the chain must still contain
that exact record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.audit.record import GENESIS, chain_hash
from gateway.audit.store import StoredRow, open_store


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int  # records checked before the first break (all of them when ok)
    head_seq: int = 0  # the last good record: keep "seq:hash" as a future anchor
    head_hash: str = GENESIS
    broken_seq: int | None = None
    broken_request_id: str | None = None
    reason: str | None = None
    # The chain verified to its head, but the anchor given is not in it: `checked` and
    # `head` then describe the whole chain, not the records before a break.
    anchor_failed: bool = False

    @property
    def head(self) -> str:
        return f"{self.head_seq}:{self.head_hash}"


def parse_anchor(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise ValueError("an anchor is SEQ:HASH as printed by `gateway audit verify`")
    return int(seq), digest.lower()


def verify_chain(where: str | Path, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Verify the audit log at a SQLite path or postgresql:// URL (opened read-only)."""
    store = open_store(where, readonly=True)
    try:
        return verify_rows(store.rows(), anchor)
    finally:
        store.close()


def verify_rows(rows: Iterable[StoredRow], anchor: tuple[int, str] | None = None) -> VerifyResult:
    prev_seq, prev_hash = 0, GENESIS
    anchor_seen: str | None = None
    for row in rows:
        reason, request_id = _check(row, prev_seq, prev_hash)
        if reason is not None:
            return VerifyResult(False, prev_seq, prev_seq, prev_hash, row.seq, request_id,
                                reason)
        prev_seq, prev_hash = row.seq, row.hash
        if anchor is not None and row.seq == anchor[0]:
            anchor_seen = row.hash
    if anchor is not None:
        seq, digest = anchor
        if anchor_seen is None:
            why = f"anchor record {seq} is missing: the log was cut after record {prev_seq}"
            return VerifyResult(False, prev_seq, prev_seq, prev_hash, seq, None, why, True)
        if anchor_seen != digest:
            why = f"record {seq} differs from the anchor: history up to it was rewritten"
            return VerifyResult(False, prev_seq, prev_seq, prev_hash, seq, None, why, True)
    return VerifyResult(True, prev_seq, prev_seq, prev_hash)


def _check(row: StoredRow, prev_seq: int, prev_hash: str) -> tuple[str | None, str | None]:
    """(why the row breaks the chain or None, its request id if readable)."""
    try:
        body = orjson.loads(row.body)
    except orjson.JSONDecodeError:
        body = None
    request_id = str(body["request_id"]) if isinstance(body, dict) and "request_id" in body \
        else str(row.columns.get("request_id", "")) or None
    if row.seq != prev_seq + 1:
        missing = f"{prev_seq + 1}" if row.seq == prev_seq + 2 else f"{prev_seq + 1}-{row.seq - 1}"
        return f"record(s) {missing} missing: deleted", request_id
    if chain_hash(row.prev_hash, row.body) != row.hash:
        return "hash does not match the record's contents: edited", request_id
    if not isinstance(body, dict):
        return "sealed body is not a JSON object", request_id
    if body.get("seq") != row.seq:
        return (f"record sealed as number {body.get('seq')} found at {row.seq}: reordered",
                request_id)
    if row.prev_hash != prev_hash:
        return ("prev_hash does not link to the previous record: a record before it was "
                "deleted, replaced or re-sealed"), request_id
    for column, value in row.columns.items():
        if body.get(column) != value:
            return f"column {column} differs from the sealed record: edited", request_id
    return None, request_id
