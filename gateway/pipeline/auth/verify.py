"""Verifier: a compact JWT to a Principal, or an AuthFailure with a bounded reason.

Order matters. The size cap and the header checks run before any cryptography; the
gateway picks the key by kid, and with it the only algorithm that key verifies; only then
is the signature checked (once per token, thanks to the TokenCache); revocation is checked
on every call. Header parameters that name other keys (`jku`, `x5u`, `jwk`, `x5c`) are
never read: trusting a key the token brings along would let anyone sign.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal, get_args

import jwt
import orjson
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from gateway.context import Principal
from gateway.pipeline.auth.cache import TokenCache
from gateway.pipeline.auth.keyring import Keyring
from gateway.pipeline.auth.keys import ASYMMETRIC, VerifyKey
from gateway.pipeline.auth.revocation import Revocation
from gateway.pipeline.auth.settings import AuthSettings

Reason = Literal["missing", "malformed", "expired", "not_yet_valid", "bad_signature",
                 "unknown_kid", "bad_claims", "revoked", "too_large", "bad_alg", "crit",
                 "multiple_headers", "query_token", "too_long_lived"]
REASONS: tuple[Reason, ...] = get_args(Reason)

ALGORITHMS = ASYMMETRIC | {"HS256"}
MAX_KID = 256  # longer kids are refused without a lookup (and without a refetch)
# header.payload.signature, base64url; the signature may be empty so `none` gets its reason.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class AuthFailure(Exception):
    """A refused token. `reason` is a metric label; `detail`, where given, is the client's
    message, built from fixed text and claim names only: never any token content."""

    def __init__(self, reason: Reason, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason: Reason = reason
        self.detail = detail


UNDECODABLE = "The token cannot be decoded: a JWT's header and payload are base64url JSON"
NUMERIC_DATE = "a number (a NumericDate)"


# A claim's name is no secret (the gateway chose it); its value is never echoed.
def missing_claim(claim: str) -> AuthFailure:
    return AuthFailure("bad_claims", f"The token lacks the required claim '{claim}'")


def mistyped_claim(claim: str, expected: str) -> AuthFailure:
    return AuthFailure("bad_claims", f"The token's '{claim}' claim must be {expected}")


def _header(token: str) -> dict[str, Any]:
    return _segment(token, 0)


def _segment(token: str, index: int) -> dict[str, Any]:
    segment = token.split(".")[index]
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_",
                               validate=True)
        header = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise AuthFailure("malformed", UNDECODABLE) from None
    if not isinstance(header, dict):
        raise AuthFailure("malformed", UNDECODABLE)
    return header


class Verifier:
    """Token in, Principal out. `signature_checks` counts the expensive step."""

    def __init__(self, settings: AuthSettings, keyring: Keyring,
                 revocation: Revocation | None = None, cache: TokenCache | None = None) -> None:
        self.settings = settings
        self.keyring = keyring
        self.revocation = revocation or Revocation()
        self.cache = cache if cache is not None else TokenCache(settings.cache_size)
        self._generation = keyring.generation
        self.signature_checks = 0

    @property
    def max_token_bytes(self) -> int:
        return self.settings.max_token_bytes

    async def start(self) -> None:
        await self.keyring.start()
        await self.revocation.start()

    async def close(self) -> None:
        await self.revocation.close()
        await self.keyring.close()

    async def verify(self, token: str) -> Principal:
        """The token's Principal; raises AuthFailure."""
        if len(token) > self.settings.max_token_bytes:
            raise AuthFailure("too_large")
        if not token.isascii():  # a compact JWT is base64url; bytes that were not UTF-8
            raise AuthFailure("malformed")  # would fail the cache's hashing (a 500)
        generation = self.keyring.generation
        if generation != self._generation:
            # Keys changed (rotation, removal): earlier verdicts may rest on a gone key.
            self.cache.clear()
            self._generation = generation
        principal = self.cache.get(token)
        if principal is None:
            principal = await self._verify_signed(token)
            if self.keyring.generation == generation:
                self.cache.put(token, principal)
        else:
            self.keyring.poke()  # keep the key set fresh even when every request hits
        if await self.revocation.is_revoked(principal.jti):
            raise AuthFailure("revoked")
        return principal

    async def _verify_signed(self, token: str) -> Principal:
        if not _COMPACT.fullmatch(token):
            raise AuthFailure("malformed")
        header = _header(token)
        if "crit" in header:
            # Extensions we would have to understand to verify safely: refuse them all.
            raise AuthFailure("crit")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthFailure("malformed", "The token's header must name its algorithm ('alg')")
        if alg not in ALGORITHMS:
            raise AuthFailure("bad_alg")
        kid = header.get("kid")
        if "kid" in header and not isinstance(kid, str):  # null included: absent is absent
            raise AuthFailure("malformed", "The token's header 'kid' must be a string")
        if kid is not None and len(kid) > MAX_KID:
            raise AuthFailure("unknown_kid")
        key = await self.keyring.find(kid)
        if key is None:
            raise AuthFailure("unknown_kid")
        if alg != key.alg:  # the key's pinned algorithm decides, never the header
            raise AuthFailure("bad_alg")
        return self._principal(self._decode(token, key))

    def _decode(self, token: str, key: VerifyKey) -> dict[str, Any]:
        s = self.settings
        self.signature_checks += 1
        try:
            return jwt.decode(
                token, key.jwk, algorithms=[key.alg], leeway=s.leeway_s, issuer=s.issuer,
                audience=list(s.audience) or None,
                options={"require": ["exp", "iat", "sub"], "verify_aud": bool(s.audience)})
        except jwt.PyJWTError as exc:
            raise _failure(exc, token) from None

    def _principal(self, claims: dict[str, Any]) -> Principal:
        mistyped = _mistyped_time(claims)
        if mistyped is not None:  # RFC 7519: NumericDate is a JSON number, not "1700000000"
            raise mistyped_claim(mistyped, NUMERIC_DATE)
        s = self.settings
        if s.max_lifetime_s is not None and claims["exp"] - claims["iat"] > s.max_lifetime_s:
            raise AuthFailure("too_long_lived")
        sub, tier = _required_string(claims, "sub"), _required_string(claims, s.tier_claim)
        org, jti = claims.get(s.org_claim), claims.get("jti")
        for name, value in ((s.org_claim, org), ("jti", jti)):
            if not (value is None or isinstance(value, str)):
                raise mistyped_claim(name, "a string")
        return Principal(sub=sub, tier=tier, org=org or None, scopes=_scopes(claims.get("scope")),
                         jti=jti or None, expires_at=float(claims["exp"]))


def _required_string(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise missing_claim(name)
    if not (isinstance(value, str) and value):
        raise mistyped_claim(name, "a non-empty string")
    return value


def _failure(exc: jwt.PyJWTError, token: str) -> AuthFailure:
    """What pyjwt's refusal of a token means for its client."""
    # pyjwt reads time claims with int(): "60" passes for a NumericDate and reads as long
    # expired, "abc" as a DecodeError. Either way the claim's type is what is wrong.
    mistyped = _mistyped_time(token) if isinstance(
        exc, jwt.ExpiredSignatureError | jwt.ImmatureSignatureError | jwt.DecodeError) else None
    if mistyped is not None:
        return mistyped_claim(mistyped, NUMERIC_DATE)
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthFailure("expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return AuthFailure("not_yet_valid")
    if isinstance(exc, jwt.InvalidSignatureError):
        return AuthFailure("bad_signature")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return missing_claim(exc.claim)
    if isinstance(exc, jwt.InvalidIssuerError):
        return AuthFailure("bad_claims", "The token was issued by another issuer "
                           "(its 'iss' claim does not match)")
    if isinstance(exc, jwt.InvalidAudienceError):
        return AuthFailure("bad_claims", "The token was issued for another service "
                           "(its 'aud' claim does not match)")
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return mistyped_claim("iat", NUMERIC_DATE)
    if isinstance(exc, InvalidSubjectError | InvalidJTIError):
        return mistyped_claim("sub" if isinstance(exc, InvalidSubjectError) else "jti",
                              "a string")
    return AuthFailure("malformed", UNDECODABLE)


_TIME_CLAIMS = ("exp", "nbf", "iat")


def _mistyped_time(token_or_claims: str | dict[str, Any]) -> str | None:
    """The first time claim that is present but not a JSON number, or None."""
    try:
        claims = _segment(token_or_claims, 1) if isinstance(token_or_claims, str) \
            else token_or_claims
    except AuthFailure:
        return None
    return next((k for k in _TIME_CLAIMS if k in claims and (
        isinstance(claims[k], bool) or not isinstance(claims[k], int | float))), None)


def _scopes(scope: object) -> frozenset[str]:
    """OAuth's space-separated string, or the list some providers send instead."""
    if scope is None:
        return frozenset()
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return frozenset(scope)
    raise mistyped_claim("scope", "a space-separated string or a list of strings")
