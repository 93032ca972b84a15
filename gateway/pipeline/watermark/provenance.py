"""The `x-gateway-provenance` response header: a signed statement of who, when, what.

    x-gateway-provenance: v=1; rid=<request id>; kid=<key id>; t=<unix seconds>;
                          h=<sha256 hex>; sig=<base64url>

`h` (non-streaming only: a streamed body is not known when headers go out) is the
SHA-256 of the response text exactly as delivered, marks included; with several choices,
of their texts in index order joined by U+001E. `sig` is HMAC-SHA256 under a key derived
from the watermark secret over the other fields in that order, truncated to 128 bits
(22 base64url characters): a header is cheap, so the tag is not shortened further.
The request id must be a header-safe token (the gateway's own x-request-id is).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.pipeline.watermark.payload import mac

HEADER = "x-gateway-provenance"
_FIELDS = ("v", "rid", "kid", "t", "h")
_SIG_BYTES = 16


def content_hash(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x1e".join(texts).encode()).hexdigest()


def _canonical(fields: dict[str, str]) -> bytes:
    return "\n".join(f"{k}={fields[k]}" for k in _FIELDS if k in fields).encode()


def _tag(secret: bytes, fields: dict[str, str]) -> str:
    tag = mac(secret, "provenance", _canonical(fields))
    return base64.urlsafe_b64encode(tag[:_SIG_BYTES]).rstrip(b"=").decode()


def sign_provenance(secret: bytes, request_id: str, kid: str, issued_at: float,
                    texts: Sequence[str] | None = None) -> str:
    """The header value; pass the delivered texts for a non-streaming response."""
    if any(c in request_id for c in ";=\r\n") or not request_id.isprintable():
        raise ValueError("request id is not header-safe")
    fields = {"v": "1", "rid": request_id, "kid": kid, "t": str(int(issued_at))}
    if texts is not None:
        fields["h"] = content_hash(texts)
    return "; ".join(f"{k}={v}" for k, v in fields.items()) + f"; sig={_tag(secret, fields)}"


@dataclass(frozen=True, slots=True)
class Provenance:
    """A verification. `valid` only when the signature is genuine and, if texts were
    given, they were checked against the signed hash and match: a header without a hash
    (a streamed response) says nothing about a text, so it is not valid *for* one.

    signature  "valid" or "invalid"
    content    "match", "mismatch", "not_checked" (texts given, but the signature failed
               or the header has no hash to check them against) or "not_given"
    """

    valid: bool
    fields: dict[str, str]
    error: str | None = None
    signature: str = "invalid"
    content: str = "not_given"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"valid": self.valid, "signature": self.signature,
                               "content": self.content}
        names = {"rid": "request_id", "kid": "key_id", "t": "time", "h": "content_sha256",
                 "v": "version"}
        out.update({names[k]: v for k, v in self.fields.items() if k in names})
        if self.error:
            out["error"] = self.error
        return out


def parse_provenance(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in value.strip().split(";"):
        if part.strip():
            key, sep, val = part.strip().partition("=")
            if not sep or key in fields:
                raise ValueError(f"malformed field {part.strip()!r}")
            fields[key] = val
    return fields


def verify_provenance(value: str, secret: bytes,
                      texts: Sequence[str] | None = None) -> Provenance:
    """Check a header value's signature (and, given the texts, the content hash)."""
    unchecked = "not_given" if texts is None else "not_checked"
    try:
        fields = parse_provenance(value)
    except ValueError as exc:
        return Provenance(False, {}, str(exc), content=unchecked)
    sig = fields.pop("sig", "")
    error = None
    if fields.get("v") != "1" or not {"rid", "kid", "t"} <= fields.keys():
        error = "not a version 1 provenance value"
    elif unknown := fields.keys() - set(_FIELDS):
        error = f"unknown fields {sorted(unknown)}"
    else:
        try:
            base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
        except (binascii.Error, ValueError):
            error = "malformed signature"
        else:
            if not hmac.compare_digest(_tag(secret, fields), sig):
                error = "signature does not match"
    if error is not None:
        return Provenance(False, fields, error, content=unchecked)
    if texts is None:
        return Provenance(True, fields, signature="valid")
    if "h" not in fields:
        return Provenance(False, fields, "the header has no content hash (a streamed "
                          "response): the text was not checked", "valid", "not_checked")
    if content_hash(texts) != fields["h"]:
        return Provenance(False, fields, "content does not match the signed hash", "valid",
                          "mismatch")
    return Provenance(True, fields, signature="valid", content="match")
