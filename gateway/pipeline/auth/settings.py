"""Authentication settings (the `auth:` section of gateway.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AuthSettings:
    # Key sources; with none set, the development JWKS under GATEWAY_HOME/keys is used.
    jwks_url: str | None = None
    jwks_file: Path | None = None
    pem_files: tuple[str, ...] = ()  # public keys; kid = file name without extension
    hs256_secret_env: str | None = None  # name of an env var holding a >= 32-byte secret
    tier_claim: str = "tier"
    issuer: str | None = None
    audience: str | None = None
    leeway_s: float = 30.0
    max_token_bytes: int = 8192
    jwks_ttl_s: float = 300.0
    jwks_timeout_s: float = 5.0
    unknown_kid_refetch_s: float = 30.0  # at most one refetch per window for unknown kids
    revocation_file: Path | None = None  # one jti per line; reloaded when it changes
    cache_size: int = 10_000  # verified tokens remembered until they expire
