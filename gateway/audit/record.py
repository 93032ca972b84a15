"""One audit record per request, its canonical form, and the hash chain that links them.

A record never holds who asked in the clear: `key_id` and `prompt_hash` are keyed hashes
(HMAC-SHA256 under the server's `audit` secret), so the log can be handed to an outside
auditor, who can group by key and match a known prompt only with the operator's help.

Chain: each stored record's `hash` is sha256(prev_hash + canonical JSON of the record,
sequence number included); the first record's prev_hash is GENESIS. Editing, deleting or
reordering any record breaks the link to the next one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

GENESIS = "0" * 64
SCHEMA_VERSION = 1
# The label values of `limit`: "admitted", "none" (not checked), or "refused:<kind>".
LIMIT_ADMITTED = "admitted"
LIMIT_NONE = "none"


def limit_refused(kind: str) -> str:
    return f"refused:{kind}"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What the gateway decided for one request, and why. Never the subject, never a token."""

    request_id: str
    time: float  # epoch seconds, when the response ended
    key_id: str  # AuditKeys.key_id(principal.sub), "-" when the caller was not identified
    tier: str
    model: str
    route: str
    status: int  # the HTTP status the client got
    decision: str  # the pipeline's decision label ("allow", "block", "rate_limited", ...)
    action: str = "none"  # the classifier chain's action (allow | flag | block | none)
    scores: Mapping[str, float] = field(default_factory=dict)  # category -> score
    categories: tuple[str, ...] = ()  # the categories that matched
    limit: str = LIMIT_NONE  # admitted | refused:<kind> | none
    prompt_tokens: int = 0
    completion_tokens: int = 0
    watermark_key_id: str | None = None  # set when the response carried a watermark
    policy_version: str = ""
    policy_hash: str = ""
    prompt_hash: str | None = None  # AuditKeys.prompt_hash(prompt)
    prompt: str | None = None  # only when the tier opts in to storing prompts

    def as_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy made sealing ten times slower.
        data = {name: getattr(self, name) for name in _NAMES}
        data["scores"] = dict(self.scores)
        data["categories"] = list(self.categories)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditRecord:
        values = {k: v for k, v in data.items() if k in _FIELDS}
        values["scores"] = dict(values.get("scores") or {})
        values["categories"] = tuple(values.get("categories") or ())
        return cls(**values)


_NAMES = tuple(f.name for f in fields(AuditRecord))
_FIELDS = frozenset(_NAMES)


@dataclass(frozen=True, slots=True)
class ChainedRecord:
    """A record as stored: its place in the chain and the hashes that seal it."""

    seq: int
    record: AuditRecord
    prev_hash: str
    hash: str

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, **self.record.as_json(), "prev_hash": self.prev_hash,
                "hash": self.hash}


def canonical(seq: int, record: AuditRecord) -> bytes:
    """The exact bytes that are stored and hashed: sorted keys, no spaces, UTF-8."""
    return orjson.dumps({"v": SCHEMA_VERSION, "seq": seq, **record.as_json()},
                        option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def seal(seq: int, record: AuditRecord, prev_hash: str) -> tuple[bytes, ChainedRecord]:
    body = canonical(seq, record)
    return body, ChainedRecord(seq, record, prev_hash, chain_hash(prev_hash, body))


Row = tuple[int, float, str, str, str, str, int, bytes, str, str]


def seal_batch(records: Sequence[AuditRecord], head: tuple[int, str] | None,
               ) -> tuple[list[ChainedRecord], list[Row]]:
    """Chain `records` after the stored head (seq, hash), or from GENESIS on an empty log:
    the sealed records and their rows in the audit table's column order."""
    seq, prev = head if head is not None else (0, GENESIS)
    sealed: list[ChainedRecord] = []
    rows: list[Row] = []
    for record in records:
        seq += 1
        body, chained = seal(seq, record, prev)
        prev = chained.hash
        sealed.append(chained)
        rows.append((seq, record.time, record.request_id, record.key_id, record.tier,
                     record.decision, record.status, body, chained.prev_hash, chained.hash))
    return sealed, rows


class AuditKeys:
    """Keyed hashes for the audit log (and logs): stable per deployment, not reversible.

    Build it from the secret store: `AuditKeys(load_secret(home, "audit"))`. Every replica
    must share the secret for key ids to agree across the fleet.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, purpose: bytes, value: str) -> str:
        digest = hmac.new(self._secret, purpose + b"\0" + value.encode(), hashlib.sha256)
        return digest.hexdigest()

    def key_id(self, sub: str) -> str:
        return "k_" + self._mac(b"key", sub)[:24]

    def prompt_hash(self, prompt: str) -> str:
        return self._mac(b"prompt", prompt)
