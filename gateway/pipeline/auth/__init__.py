"""Auth: tiered JWT access. Who is asking, from a token the gateway can verify.

    settings.py    AuthSettings (the `auth:` section)
    keys.py        key sources: JWKS URL (cached, single-flight), JWKS file, PEM, HS256
    revocation.py  jti deny-list: file, optionally Redis
    verify.py      Verifier: size, header, pinned algorithm, claims, cache
    stage.py       AuthStage: Authorization header -> Principal, or 401
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from gateway.devkeys import ensure_dev_keys
from gateway.pipeline.auth.keys import (
    JwksFetcher,
    VerifyKey,
    load_hs256,
    load_jwks_file,
    load_pem,
)
from gateway.pipeline.auth.revocation import RevocationList
from gateway.pipeline.auth.settings import AuthSettings
from gateway.pipeline.auth.stage import AuthStage
from gateway.pipeline.auth.verify import AuthFailure, Verifier

__all__ = ["AuthFailure", "AuthSettings", "AuthStage", "Verifier", "build_verifier"]


def build_verifier(settings: AuthSettings, home: Path, session: aiohttp.ClientSession,
                   redis: object = None) -> tuple[Verifier, JwksFetcher | None]:
    static: dict[str, VerifyKey] = {}
    if settings.jwks_file is not None:
        static |= load_jwks_file(settings.jwks_file)
    for pem in settings.pem_files:
        key = load_pem(Path(pem))
        static[key.kid] = key
    if settings.hs256_secret_env:
        key = load_hs256(settings.hs256_secret_env)
        static[key.kid] = key
    fetcher = None
    if settings.jwks_url:
        fetcher = JwksFetcher(settings.jwks_url, session, settings.jwks_ttl_s,
                              settings.jwks_timeout_s, settings.unknown_kid_refetch_s)
    elif not static:
        static = load_jwks_file(ensure_dev_keys(home))  # the development default

    async def lookup(kid: str | None) -> VerifyKey | None:
        if kid is not None and kid in static:
            return static[kid]
        if fetcher is not None:
            return await fetcher.get(kid)
        if kid is None and len(static) == 1:
            return next(iter(static.values()))
        return None

    revocation = RevocationList(settings.revocation_file, redis)
    return Verifier(settings, lookup, revocation), fetcher
