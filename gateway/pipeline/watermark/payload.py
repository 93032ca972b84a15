"""The signed invisible payload: its fields, its encoding, finding, checking and removing it.

Encoding: Unicode variation selectors, one byte per character
------------------------------------------------------------
Byte b is written as VS(b+1): U+FE00..U+FE0F for b < 16, U+E0100..U+E01EF otherwise.
Chosen over tag characters (U+E0000..E007F) because:

- 256 values per character (tags give 7 bits), so a mark is 32 characters;
- they survive NFKC/NFC (no decomposition, combining class 0, never reordered or
  composed), JSON (escaped or raw UTF-8), copy and paste, and most sanitisers: emoji
  depend on U+FE0F, so pipelines keep variation selectors, while tag characters are now
  commonly stripped as an "ASCII smuggling" channel;
- they are default-ignorable nonspacing marks (gc=Mn, Grapheme_Cluster_Break=Extend):
  renderers draw nothing and a mark joins the grapheme *before* it, never splitting one.

A selector only changes rendering as part of a registered variation sequence (base +
one selector). Marks are therefore placed only after U+0020 SPACE or CJK sentence
punctuation or, at the very end, an ASCII letter or punctuation (see `embed`), and the
first byte of every mark is >= 16, so the character next to the base is a supplementary
selector (U+E01xx), which is only registered after CJK ideographs (never a mark's base).

Layout (32 bytes, so 32 characters, 4 UTF-8 bytes each; 128 bytes per mark):

    0      magic   0xB0 | flags (bit 0: request ref is a hash, bit 1: policy ref is a hash)
    1..8   key id  HMAC-SHA256(secret/"key-id", sub)[:8]: who, without revealing the sub
    9..16  request ref: the first 8 bytes of a 32-hex request id (the gateway's uuid4,
           so the ref is a greppable prefix of it), else SHA-256(request id)[:8] for
           client-supplied ids (up to 128 characters); the ledger maps a ref to the full id
    17..20 issued, unix seconds (big-endian uint32, good until 2106)
    21..23 policy ref: first 3 bytes of the policy version (hex digest), else SHA-256[:3]
    24..31 tag: HMAC-SHA256(secret/"payload", bytes 0..23)[:8]

Tag size: 64 bits. Forging a payload means guessing the tag; nobody can test guesses
offline (only the admin-only detector knows the key), so each forged mark succeeds with
probability 2^-64 and shows up as "forged" otherwise. 32 bits would already make blind
forgery hopeless; 64 also keeps it hopeless for someone with unlimited detector access.
Each tag byte costs 4 bytes of UTF-8 in every mark, which is why it stops at 8.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MARK_LEN = 32
_BODY_LEN = 24
MAGIC = 0xB0
_MAGIC_MASK = 0xFC
_FLAG_RID_HASH = 0x01
_FLAG_POLICY_HASH = 0x02
_UUID_HEX = re.compile(r"[0-9a-f]{32}")
_HEX = re.compile(r"[0-9a-f]+")

# Any run of selectors long enough to hold a mark; runs in ordinary text are 1 long.
_RUN = re.compile(f"[\ufe00-\ufe0f\U000e0100-\U000e01ef]{{{MARK_LEN},}}")
_ANY_SELECTOR = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")


# Both are pure functions of (secret, input) and run several times per response: cached.
@functools.lru_cache(maxsize=64)
def derive(secret: bytes, label: str) -> bytes:
    """A purpose-specific key from the watermark secret (domain separation)."""
    return hmac.digest(secret, b"gateway-watermark/" + label.encode(), "sha256")


@functools.lru_cache(maxsize=64)
def _keyed(secret: bytes, label: str) -> hmac.HMAC:
    return hmac.new(derive(secret, label), digestmod=hashlib.sha256)


def mac(secret: bytes, label: str, message: bytes) -> bytes:
    """HMAC-SHA256 of `message` under the `label` key. Copying a keyed state is cheaper
    than a one-shot HMAC, which makes OpenSSL 3 look the algorithm up on every call."""
    keyed = _keyed(secret, label).copy()
    keyed.update(message)
    return keyed.digest()


@functools.lru_cache(maxsize=8192)
def key_id(secret: bytes, sub: str) -> str:
    """The subject's key id: 16 hex characters, keyed so the sub cannot be recovered."""
    return mac(secret, "key-id", sub.encode())[:8].hex()


def request_ref(request_id: str) -> tuple[bytes, bool]:
    """(8-byte ref, is_hash) for a request id: a prefix of a 32-hex id, else a hash."""
    rid = request_id.lower().replace("-", "") if len(request_id) == 36 else request_id
    if _UUID_HEX.fullmatch(rid):
        return bytes.fromhex(rid[:16]), False
    return hashlib.sha256(request_id.encode()).digest()[:8], True


def policy_ref(version: str) -> tuple[bytes, bool]:
    """(3-byte ref, is_hash) for a policy version."""
    if len(version) >= 6 and _HEX.fullmatch(version):
        return bytes.fromhex(version[:6]), False
    return hashlib.sha256(version.encode()).digest()[:3], True


def _byte_char(b: int) -> str:
    return chr(0xFE00 + b) if b < 16 else chr(0xE0100 + b - 16)


_ENCODE = tuple(_byte_char(b) for b in range(256))


def _char_byte(c: str) -> int:
    o = ord(c)
    return o - 0xFE00 if o < 0x10000 else o - 0xE0100 + 16


@dataclass(frozen=True, slots=True)
class Payload:
    """One decoded mark. `verify` says whether its tag is genuine."""

    key_id: str
    request_ref: str  # 16 hex
    request_ref_is_hash: bool
    issued_at: int
    policy_ref: str  # 6 hex
    policy_ref_is_hash: bool
    raw: bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "request_ref": self.request_ref,
            "request_ref_kind": "sha256" if self.request_ref_is_hash else "prefix",
            "issued_at": datetime.fromtimestamp(self.issued_at, UTC).isoformat(),
            "policy_ref": self.policy_ref,
            "policy_ref_kind": "sha256" if self.policy_ref_is_hash else "prefix",
        }


def make_payload(secret: bytes, kid: str, request_id: str, issued_at: float,
                 policy_version: str) -> bytes:
    """The 32 signed bytes of a payload."""
    rid, rid_hash = request_ref(request_id)
    pol, pol_hash = policy_ref(policy_version)
    flags = (_FLAG_RID_HASH if rid_hash else 0) | (_FLAG_POLICY_HASH if pol_hash else 0)
    when = min(max(int(issued_at), 0), 0xFFFFFFFF)
    body = bytes((MAGIC | flags,)) + bytes.fromhex(kid) + rid + struct.pack(">I", when) + pol
    if len(body) != _BODY_LEN:
        raise ValueError("key id must be 16 hex characters")
    return body + _tag(secret, body)


def _tag(secret: bytes, body: bytes) -> bytes:
    return mac(secret, "payload", body)[:8]


def encode_mark(payload: bytes) -> str:
    """The invisible characters for a 32-byte payload."""
    if len(payload) != MARK_LEN:
        raise ValueError(f"a payload is {MARK_LEN} bytes")
    return "".join(_ENCODE[b] for b in payload)


def _decode(run: str, start: int) -> bytes | None:
    """The payload bytes of a mark starting at run[start], or None if none starts there."""
    if len(run) - start < MARK_LEN or _char_byte(run[start]) & _MAGIC_MASK != MAGIC:
        return None
    return bytes(_char_byte(c) for c in run[start:start + MARK_LEN])


def _parse(raw: bytes) -> Payload:
    flags = raw[0] & ~_MAGIC_MASK
    (issued,) = struct.unpack(">I", raw[17:21])
    return Payload(key_id=raw[1:9].hex(), request_ref=raw[9:17].hex(),
                   request_ref_is_hash=bool(flags & _FLAG_RID_HASH), issued_at=issued,
                   policy_ref=raw[21:24].hex(),
                   policy_ref_is_hash=bool(flags & _FLAG_POLICY_HASH), raw=raw)


def _marks_in_run(run: str) -> list[tuple[int, bytes]]:
    """(offset, bytes) of each mark in a run of selectors, scanning left to right."""
    found: list[tuple[int, bytes]] = []
    i = 0
    while i <= len(run) - MARK_LEN:
        raw = _decode(run, i)
        if raw is None:
            i += 1
        else:
            found.append((i, raw))
            i += MARK_LEN
    return found


def extract_payloads(text: str) -> list[Payload]:
    """Every distinct payload in the text, in order of first appearance (genuine or not)."""
    seen: dict[bytes, Payload] = {}
    for m in _RUN.finditer(text):
        for _, raw in _marks_in_run(m.group()):
            if raw not in seen:
                seen[raw] = _parse(raw)
    return list(seen.values())


def count_marks(text: str) -> int:
    return sum(len(_marks_in_run(m.group())) for m in _RUN.finditer(text))


def verify(payload: Payload, secret: bytes) -> bool:
    """True when the payload's tag was made with this secret."""
    body, tag = payload.raw[:_BODY_LEN], payload.raw[_BODY_LEN:]
    return hmac.compare_digest(_tag(secret, body), tag)


def strip_marks(text: str) -> str:
    """The text with every mark-shaped run removed; nothing else changes.

    Anything shaped like a mark goes, genuine or forged: this is what the gateway
    applies to incoming messages, and what restores the visible text byte for byte.
    """
    if _RUN.search(text) is None:
        return text
    return _RUN.sub(_strip_run, text)


def _strip_run(m: re.Match[str]) -> str:
    run = m.group()
    marks = _marks_in_run(run)
    if not marks:
        return run
    kept: list[str] = []
    last = 0
    for offset, _ in marks:
        kept.append(run[last:offset])
        last = offset + MARK_LEN
    kept.append(run[last:])
    return "".join(kept)


def has_selectors(text: str) -> bool:
    return _ANY_SELECTOR.search(text) is not None
