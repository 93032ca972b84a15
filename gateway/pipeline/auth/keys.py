"""Key material: JWKS entries, PEM files and an HS256 secret, each pinned to one algorithm.

A key's algorithm is fixed when the key is loaded (from the JWK's `alg`, else from its
kty/crv); a token's `alg` header must equal it and never chooses it. So `none`, and HS256
"signed" with a public key, have nothing to match. Only public members of a JWK are kept:
a JWKS that leaks a private key still yields a public verification key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK, PyJWKError
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

log = logging.getLogger("gateway.auth")

ASYMMETRIC = frozenset({"EdDSA", "ES256", "RS256"})

# RFC 7638 §3.2: the required public members of each key type, in lexicographic order.
_PUBLIC_MEMBERS = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "oct": ("k", "kty"),
}


class UnusableKey(ValueError):
    """A key that cannot verify tokens here; the message says why, never the key."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str
    alg: str  # pinned: the only algorithm this key verifies
    thumb: str  # RFC 7638 thumbprint: names the material whatever kid it was published under
    jwk: PyJWK


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    kty = jwk.get("kty")
    members = _PUBLIC_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise UnusableKey("unsupported key type or missing public members")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def infer_alg(jwk: Mapping[str, Any]) -> str | None:
    """The algorithm a key without `alg` verifies, from its type and curve."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        return "EdDSA"
    if kty == "EC" and crv == "P-256":
        return "ES256"
    if kty == "RSA":
        return "RS256"
    return None


def jwk_key(jwk: Mapping[str, Any]) -> VerifyKey:
    """One JWKS entry as an asymmetric verification key; raises UnusableKey."""
    if jwk.get("use", "sig") != "sig":
        raise UnusableKey("use is not sig")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise UnusableKey("key_ops lacks verify")
    alg = jwk.get("alg") or infer_alg(jwk)
    if alg not in ASYMMETRIC:
        raise UnusableKey(f"algorithm {alg!r} not accepted from a key set")
    thumb = thumbprint(jwk)
    kid = jwk.get("kid", thumb)
    if not isinstance(kid, str) or not kid:
        raise UnusableKey("kid is not a string")
    members = _PUBLIC_MEMBERS[jwk["kty"]]
    public: dict[str, Any] = {m: jwk[m] for m in members}
    try:
        key = PyJWK({**public, "kid": kid}, algorithm=alg)
    except (PyJWKError, InvalidKeyError, ValueError) as exc:  # e.g. alg does not fit the kty
        raise UnusableKey(f"cannot load key: {type(exc).__name__}") from None
    # pyjwt would warn on every verification with a short RSA key; refuse it once here.
    weak = key.Algorithm.check_key_length(key.key)
    if weak:
        raise UnusableKey(weak)
    return VerifyKey(kid=kid, alg=str(alg), thumb=thumb, jwk=key)


def parse_jwks(raw: bytes, source: str) -> dict[str, VerifyKey]:
    """The usable keys of a JWKS document by kid; ValueError when the document is unusable.

    An empty result is an error too: a provider that suddenly publishes no usable key is
    far more likely broken than rotating everything away, so the last good set is kept.
    """
    doc = orjson.loads(raw)
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{source}: not a JWKS document (no keys list)")
    keys: dict[str, VerifyKey] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        try:
            key = jwk_key(entry)
        except UnusableKey as exc:
            log.debug("%s: key %d ignored: %s", source, i, exc)
            continue
        if key.kid in keys:
            log.warning("%s: duplicate kid, the first key is used", source)
            continue
        keys[key.kid] = key
    if not keys:
        raise ValueError(f"{source}: no usable signing key")
    return keys


def pem_jwk(data: bytes, where: str) -> dict[str, Any]:
    """The public JWK (no kid) of a PEM public key; UnusableKey names `where`."""
    try:
        public = load_pem_public_key(data)
    except ValueError:
        raise UnusableKey(f"{where}: not a PEM public key") from None
    jwk: dict[str, Any]
    if isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        raise UnusableKey(f"{where}: unsupported public key type")
    jwk.pop("kid", None)
    return jwk


def pem_key(path: Path) -> VerifyKey:
    """A public key PEM file; its kid is its RFC 7638 thumbprint."""
    jwk = pem_jwk(path.read_bytes(), str(path))
    try:
        return jwk_key(jwk)
    except UnusableKey as exc:
        raise UnusableKey(f"{path}: {exc}") from None


def hs256_key(secret: bytes, kid: str) -> VerifyKey:
    jwk = {"kty": "oct", "k": b64url(secret), "kid": kid}
    return VerifyKey(kid=kid, alg="HS256", thumb=thumbprint(jwk),
                     jwk=PyJWK(jwk, algorithm="HS256"))
