"""Token verification: from a compact JWT to a Principal, or an AuthFailure with a reason.

Order matters: size cap and header checks run before any cryptography, the key (and with
it the algorithm) is chosen by the gateway, and only then is the signature checked.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

from gateway.context import Principal
from gateway.pipeline.auth.keys import VerifyKey
from gateway.pipeline.auth.revocation import RevocationList
from gateway.pipeline.auth.settings import AuthSettings

MAX_KID = 256


class AuthFailure(Exception):
    """A refused token; `reason` is a bounded metric label, never token content."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


KeyLookup = Callable[[str | None], Awaitable[VerifyKey | None]]


class Verifier:
    def __init__(self, settings: AuthSettings, lookup: KeyLookup,
                 revocation: RevocationList) -> None:
        self._settings = settings
        self._lookup = lookup
        self._revocation = revocation
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self.signature_checks = 0

    async def verify(self, token: str) -> Principal:
        principal = self._cached(token)
        if principal is None:
            principal = await self._verify(token)
            self._remember(token, principal)
        if await self._revocation.is_revoked(principal.jti):
            raise AuthFailure("revoked", "The token has been revoked")
        return principal

    def _cached(self, token: str) -> Principal | None:
        principal = self._cache.get(token)
        if principal is None:
            return None
        if principal.expires_at + self._settings.leeway_s < time.time():
            del self._cache[token]
            raise AuthFailure("expired", "The token has expired")
        self._cache.move_to_end(token)
        return principal

    def _remember(self, token: str, principal: Principal) -> None:
        self._cache[token] = principal
        while len(self._cache) > self._settings.cache_size:
            self._cache.popitem(last=False)

    async def _verify(self, token: str) -> Principal:
        if len(token) > self._settings.max_token_bytes:
            raise AuthFailure("too_large", "The token is too large")
        if token.count(".") != 2:
            raise AuthFailure("malformed", "The token is not a compact JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthFailure("malformed", "The token header cannot be decoded") from None
        if "crit" in header:
            raise AuthFailure("crit", "Tokens with critical header parameters are refused")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID):
            raise AuthFailure("unknown_kid", "The token's key id is not valid")
        key = await self._lookup(kid)
        if key is None:
            raise AuthFailure("unknown_kid", "The token was not signed by a known key")
        if header.get("alg") != key.alg:
            raise AuthFailure("bad_alg", "The token's algorithm does not match its key")
        claims = self._decode(token, key)
        return self._principal(claims)

    def _decode(self, token: str, key: VerifyKey) -> dict[str, Any]:
        s = self._settings
        self.signature_checks += 1
        try:
            return jwt.decode(
                token, key.key, algorithms=[key.alg], leeway=s.leeway_s, issuer=s.issuer,
                audience=s.audience,
                options={"require": ["exp", "iat", "sub"], "verify_aud": s.audience is not None})
        except jwt.ExpiredSignatureError:
            raise AuthFailure("expired", "The token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailure("not_yet_valid", "The token is not valid yet") from None
        except jwt.InvalidSignatureError:
            raise AuthFailure("bad_signature", "The token signature is invalid") from None
        except (jwt.MissingRequiredClaimError, jwt.InvalidIssuerError,
                jwt.InvalidAudienceError, jwt.InvalidIssuedAtError) as exc:
            raise AuthFailure("bad_claims", f"The token's claims are not acceptable: "
                              f"{exc.__class__.__name__}") from None
        except jwt.InvalidTokenError:
            raise AuthFailure("malformed", "The token cannot be decoded") from None

    def _principal(self, claims: dict[str, Any]) -> Principal:
        sub, tier = claims.get("sub"), claims.get(self._settings.tier_claim)
        if not isinstance(sub, str) or not sub:
            raise AuthFailure("bad_claims", "The token has no usable 'sub' claim")
        if not isinstance(tier, str) or not tier:
            raise AuthFailure("bad_claims", "The token has no tier claim")
        scope = claims.get("scope", "")
        scopes = scope.split() if isinstance(scope, str) else [
            s for s in scope if isinstance(s, str)] if isinstance(scope, list) else []
        org, jti = claims.get("org"), claims.get("jti")
        return Principal(sub=sub, tier=tier, org=org if isinstance(org, str) else None,
                         scopes=frozenset(scopes), jti=jti if isinstance(jti, str) else None,
                         expires_at=float(claims["exp"]))
