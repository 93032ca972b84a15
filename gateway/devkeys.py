"""Development keys and tokens: an Ed25519 keypair and its JWKS under GATEWAY_HOME/keys.

`gateway token mint` signs with the private key; `gateway serve`, when no key source is
configured, verifies with the JWKS beside it, so both work with no configuration as long
as they share GATEWAY_HOME. For development and tests only: production deployments point
`auth.jwks_url` (or a mounted JWKS or PEM) at their identity provider.

    <dir>/signing-key.pem   private key, PKCS#8, mode 0600
    <dir>/public-key.pem    public key, SubjectPublicKeyInfo
    <dir>/jwks.json         {"keys": [{kty, crv, x, kid, alg, use}]}, kid = RFC 7638 thumbprint
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.pipeline.auth.keys import b64url, thumbprint

PRIVATE = "signing-key.pem"
PUBLIC = "public-key.pem"
JWKS = "jwks.json"


class DevKeyError(ValueError):
    """GATEWAY_HOME cannot hold development keys, or holds unusable ones; the message
    names the path and what to do. Nothing there is ever replaced to get past it."""


def public_jwk(private: Ed25519PrivateKey) -> dict[str, str]:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    return {**jwk, "kid": thumbprint(jwk), "alg": "EdDSA", "use": "sig"}


def generate_keys(out_dir: Path) -> Path:
    """Write a new keypair and its JWKS into out_dir; returns the JWKS path.

    Raises FileExistsError rather than replace a signing key: every token it signed, and
    every deployment that trusts its JWKS, would silently stop working. Any other OSError
    (NotADirectoryError when out_dir is a file) means out_dir cannot hold the keys.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        # Something other than a directory is there: not a signing key to protect.
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                 str(out_dir)) from None
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # O_EXCL with the mode given at creation: the key is never readable by others, even
    # for an instant, and an existing key is never overwritten.
    fd = os.open(out_dir / PRIVATE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    (out_dir / PUBLIC).write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    jwks = out_dir / JWKS
    staged = out_dir / f".{JWKS}.tmp"
    staged.write_text(json.dumps({"keys": [public_jwk(private)]}, indent=2) + "\n")
    staged.replace(jwks)  # readers see the old document or the whole new one
    return jwks


def ensure_dev_keys(home: Path) -> Path:
    """The development JWKS under home/keys, created on first use; returns its path.

    Raises DevKeyError when home is not a usable directory, or when home/keys already
    holds something other than a complete key set: that is never replaced.
    """
    keys = home / "keys"
    if (keys / JWKS).exists():
        return keys / JWKS
    _check_keys_dir(keys)
    try:
        home.mkdir(parents=True, exist_ok=True)
        # Built aside and renamed into place in one step, so a `token mint` and a `serve`
        # starting together agree on one key instead of each writing its own.
        staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=home))
    except FileExistsError:
        raise DevKeyError(f"GATEWAY_HOME {home} is not a directory") from None
    except OSError as exc:
        raise DevKeyError(f"cannot create development keys in GATEWAY_HOME {home}: "
                          f"{exc.strerror or exc}") from None
    try:
        generate_keys(staging)
        try:
            # rename() replaces only an empty directory: a key set that is there is kept.
            staging.rename(keys)
        except OSError:
            if not (keys / JWKS).exists():  # else another process made it first
                _check_keys_dir(keys)
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return keys / JWKS


def _check_keys_dir(keys: Path) -> None:
    """Refuse a keys directory without a JWKS that is not empty (a partial copy, a
    corrupt key): replacing it would lose a signing key someone may still rely on."""
    if keys.exists() and not keys.is_dir():
        raise DevKeyError(f"{keys} is not a directory; move it away to create "
                          "development keys")
    if keys.is_dir() and any(keys.iterdir()) and not (keys / JWKS).exists():
        raise DevKeyError(f"{keys} holds no {JWKS}: an incomplete development key set; "
                          "restore it, or move the directory away to create new keys")


def _signing_key(home: Path) -> Ed25519PrivateKey:
    path = ensure_dev_keys(home).parent / PRIVATE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise DevKeyError(f"{path} is missing: this GATEWAY_HOME verifies development "
                          "tokens but cannot mint them") from None
    except OSError as exc:
        raise DevKeyError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise DevKeyError(f"{path} is not an unencrypted Ed25519 private key in PEM")
    return key


def mint_token(home: Path, tier: str, sub: str, ttl: int = 3600, org: str | None = None,
               scopes: tuple[str, ...] = (), tier_claim: str = "tier") -> str:
    """A token the default configuration (development keys under `home`) accepts;
    raises DevKeyError when home holds no usable signing key."""
    key = _signing_key(home)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, tier_claim: tier, "iat": now, "exp": now + ttl,
                              "jti": secrets.token_urlsafe(16)}
    if org:
        claims["org"] = org
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": public_jwk(key)["kid"]})
