"""Verification keys: static sources (JWKS file, PEM files, HS256 secret) and a JWKS URL.

Each key pins its algorithm; the token's `alg` header must match it and is never used to
choose one. `kid` values are only ever dictionary keys in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

log = logging.getLogger("gateway.auth")

ASYMMETRIC = frozenset({"EdDSA", "ES256", "RS256"})
HS256_MIN_BYTES = 32


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str
    alg: str
    key: Any  # a cryptography public key, or bytes for HS256


def _alg_for(jwk: dict[str, Any]) -> str | None:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        return "EdDSA"
    if kty == "EC" and crv == "P-256":
        return "ES256"
    if kty == "RSA":
        return "RS256"
    return None


def parse_jwks(document: Any) -> dict[str, VerifyKey]:
    """Signature keys of a JWKS document by kid; others (use != sig, unknown types) dropped."""
    keys: dict[str, VerifyKey] = {}
    entries = document.get("keys") if isinstance(document, dict) else None
    for jwk in entries if isinstance(entries, list) else ():
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kid, alg = jwk.get("kid"), jwk.get("alg") or _alg_for(jwk)
        if not isinstance(kid, str) or alg not in ASYMMETRIC:
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("ignoring an unusable key in the key set (kid %.40r)", kid)
            continue
        keys[kid] = VerifyKey(kid, alg, key)
    return keys


def load_pem(path: Path) -> VerifyKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if isinstance(key, ed25519.Ed25519PublicKey):
        alg = "EdDSA"
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        alg = "ES256"
    elif isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        alg = "RS256"
    else:
        raise ValueError(f"{path}: unsupported public key type")
    return VerifyKey(path.stem, alg, key)


def load_hs256(env_name: str) -> VerifyKey:
    secret = os.environ.get(env_name, "").encode()
    if len(secret) < HS256_MIN_BYTES:
        raise ValueError(f"{env_name} must hold an HS256 secret of at least "
                         f"{HS256_MIN_BYTES} bytes")
    return VerifyKey("hs256", "HS256", secret)


def load_jwks_file(path: Path) -> dict[str, VerifyKey]:
    return parse_jwks(json.loads(path.read_text()))


class JwksFetcher:
    """A JWKS URL: cached for a TTL, refreshed single-flight, last good set kept on failure.

    An unknown kid may trigger a refetch (a rotation in progress), but at most one per
    `refetch_s`, so a caller spraying random kids cannot flood the identity provider.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession, ttl_s: float,
                 timeout_s: float, refetch_s: float) -> None:
        self.url = url
        self.keys: dict[str, VerifyKey] = {}
        self.fetches = 0
        self._session = session
        self._ttl_s = ttl_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._refetch_s = refetch_s
        self._fetched_at = -1e18
        self._last_attempt = -1e18
        self._inflight: asyncio.Task[None] | None = None

    async def get(self, kid: str | None) -> VerifyKey | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self._ttl_s
        unknown = kid is not None and kid not in self.keys
        if stale or (unknown and now - self._last_attempt > self._refetch_s):
            await self.refresh()
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    async def refresh(self) -> None:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        self._last_attempt = time.monotonic()
        self.fetches += 1
        try:
            async with self._session.get(self.url, timeout=self._timeout) as resp:
                resp.raise_for_status()
                keys = parse_jwks(json.loads(await resp.read()))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("JWKS fetch failed (%s); keeping %d known keys",
                        exc.__class__.__name__, len(self.keys))
            # Retry after the throttle window, not on every request.
            self._fetched_at = time.monotonic() - self._ttl_s + self._refetch_s
            return
        if keys:
            self.keys = keys
        self._fetched_at = time.monotonic()
