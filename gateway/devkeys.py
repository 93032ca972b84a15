"""Development keys and tokens: an Ed25519 keypair and JWKS under GATEWAY_HOME/keys.

`gateway token mint` signs with the private key; `gateway serve`, when no key source is
configured, verifies with the JWKS beside it. For development and tests only: production
deployments point `auth.jwks_url` (or a mounted JWKS/PEM) at their identity provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PRIVATE = "signing-key.pem"
PUBLIC = "public-key.pem"
JWKS = "jwks.json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint of an OKP key: the stable kid."""
    canonical = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]},
                           separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def generate_keys(out_dir: Path) -> Path:
    """Write a new keypair and its JWKS into out_dir; returns the JWKS path."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}
    jwk |= {"kid": thumbprint(jwk), "alg": "EdDSA", "use": "sig"}
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path = out_dir / PRIVATE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    (out_dir / PUBLIC).write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (out_dir / JWKS).write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    return out_dir / JWKS


def ensure_dev_keys(home: Path) -> Path:
    """The dev JWKS under home/keys, created on first use."""
    keys = home / "keys"
    if not (keys / JWKS).exists() or not (keys / PRIVATE).exists():
        generate_keys(keys)
    return keys / JWKS


def mint_token(home: Path, *, tier: str, sub: str, ttl: int = 3600, org: str | None = None,
               scopes: tuple[str, ...] = (), tier_claim: str = "tier") -> str:
    jwks_path = ensure_dev_keys(home)
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, tier_claim: tier, "iat": now, "exp": now + ttl,
                                 "jti": secrets.token_hex(12)}
    if org:
        claims["org"] = org
    if scopes:
        claims["scope"] = " ".join(scopes)
    key = (home / "keys" / PRIVATE).read_bytes()
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})
