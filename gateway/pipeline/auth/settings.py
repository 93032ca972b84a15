"""AuthSettings: where verification keys come from and what a token must carry.

With no key source configured (no jwks_url, jwks_file, pem_files or hs256_secret_env) the
gateway verifies tokens signed by the development key under GATEWAY_HOME/keys, the key
`gateway token mint` signs with, so a fresh checkout works with no configuration.
Relative paths are under GATEWAY_HOME, like every other file the gateway owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    jwks_url: str | None = None  # the identity provider's JWKS, fetched and cached
    jwks_file: Path | None = None  # a JWKS document on disk (e.g. a mounted Secret)
    pem_files: tuple[Path, ...] = ()  # public keys, one per file; kid = RFC 7638 thumbprint
    # HS256 is opt-in: the name of the environment variable holding the shared secret.
    hs256_secret_env: str | None = None
    hs256_kid: str = "hs256"  # the kid HS256 tokens may carry (or none, if it is the only key)
    issuer: str | None = None  # checked when set
    audience: tuple[str, ...] = ()  # checked when set: the token's aud must name one of these
    tier_claim: str = "tier"
    org_claim: str = "org"
    leeway_s: float = 30.0  # clock skew allowed on exp, nbf and iat
    # Longest lifetime (exp - iat) a token may have: an `exp` of 10**30 would otherwise be
    # a credential that never expires. null: no bound.
    max_lifetime_s: float | None = 366 * 86400.0
    max_token_bytes: int = 8192  # longer tokens are refused before any decoding
    jwks_ttl_s: float = 300.0  # a key set older than this is refreshed in the background
    # Least time between two fetches caused by unknown kids (or by failures): a client
    # spraying random kids costs the identity provider at most one request per window.
    jwks_refetch_s: float = 30.0
    jwks_timeout_s: float = 5.0
    revocation_file: Path | None = None  # jti deny-list, one per line, reloaded on change
    revocation_poll_s: float = 1.0
    revocation_redis_key: str = "gateway:revoked_jti"  # a Redis set, when Redis is configured
    revocation_redis_timeout_s: float = 1.0
    # While the Redis set cannot be read: fail_closed answers 503 (a revoked token must not
    # get in because the store is slow or busy), fail_open trusts the file list alone.
    # Unset: as ratelimit.on_store_error (fail_closed there means fail_closed here).
    revocation_on_error: str | None = None
    cache_size: int = 10_000  # verified tokens remembered; 0 turns the cache off

    @property
    def uses_dev_keys(self) -> bool:
        return not (self.jwks_url or self.jwks_file or self.pem_files or self.hs256_secret_env)

    def resolve(self, home: Path, path: Path) -> Path:
        return path if path.is_absolute() else home / path

    def problems(self) -> list[str]:
        """Validation messages, each starting with the key, for the settings loader."""
        found: list[str] = []
        if self.max_lifetime_s is not None and self.max_lifetime_s <= 0:
            found.append("max_lifetime_s: must be positive, or null for no bound")
        if self.jwks_url is not None:
            parts = urlsplit(self.jwks_url)
            # Keys fetched over plain HTTP could be swapped by anyone on the path.
            if not parts.hostname or parts.scheme not in ("http", "https") or (
                    parts.scheme == "http" and parts.hostname not in _LOOPBACK):
                found.append("jwks_url: expected an https URL (http only for loopback)")
        if self.hs256_secret_env is not None and not self.hs256_secret_env:
            found.append("hs256_secret_env: must name an environment variable")
        for name in ("tier_claim", "org_claim", "hs256_kid", "revocation_redis_key"):
            if not getattr(self, name):
                found.append(f"{name}: must not be empty")
        if self.revocation_on_error not in (None, "fail_closed", "fail_open"):
            found.append("revocation_on_error: one of fail_closed, fail_open")
        if self.max_token_bytes < 256:
            found.append("max_token_bytes: must be at least 256")
        for name in ("jwks_ttl_s", "jwks_timeout_s", "revocation_poll_s",
                     "revocation_redis_timeout_s"):
            if getattr(self, name) <= 0:
                found.append(f"{name}: must be positive")
        return found
