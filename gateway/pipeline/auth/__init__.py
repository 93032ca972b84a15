"""Auth: tiered JWT access. Who is asking, from a token the gateway can verify.

    settings.py    AuthSettings: the `auth:` section of gateway.yaml
    keys.py        key material pinned to one algorithm: JWK, PEM, HS256; RFC 7638 kids
    jwks.py        KeyCache: a JWKS URL or file, TTL, single-flight, unknown-kid throttle
    keyring.py     Keyring: all trusted keys, found by kid
    revocation.py  jti deny-list file (watched) and optional Redis set
    cache.py       TokenCache: one signature check per token until it expires
    verify.py      Verifier: size, header, pinned algorithm, signature, claims, revocation
    stage.py       AuthStage: Authorization header -> Principal, or an OpenAI-shaped 401
    build.py       build_verifier: settings -> Verifier
"""

from __future__ import annotations

from gateway.pipeline.auth.build import AuthConfigError, build_verifier
from gateway.pipeline.auth.settings import AuthSettings
from gateway.pipeline.auth.stage import AuthStage
from gateway.pipeline.auth.verify import REASONS, AuthFailure, Reason, Verifier

__all__ = ["REASONS", "AuthConfigError", "AuthFailure", "AuthSettings", "AuthStage", "Reason",
           "Verifier", "build_verifier"]
