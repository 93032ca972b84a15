"""AuthStage: the Authorization header to a Principal, or a 401 that says why (not how).

`authenticate` runs before the body is read (strangers cost no parsing); `check` is the
stage seam in the pipeline and only confirms a Principal is in place and unexpired.
Refusals are OpenAI-shaped 401s with an RFC 6750 challenge; their messages are fixed
strings or name a claim (never its value), so no part of a token can ever be echoed back
or logged. Each carries its reason, the bounded label of gateway_auth_failures_total,
which the request's log line repeats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.context import Principal, RequestContext
from gateway.errors import TokenRefused
from gateway.pipeline import ALLOW, Decision, deny
from gateway.pipeline.auth.verify import AuthFailure, Reason, Verifier

log = logging.getLogger("gateway.auth")

MISSING_CHALLENGE = 'Bearer realm="gateway"'
INVALID_CHALLENGE = 'Bearer error="invalid_token"'

_MESSAGES: dict[Reason, str] = {
    "missing": "Missing bearer token: send 'Authorization: Bearer <token>'",
    "malformed": "The Authorization header must be 'Bearer <token>' with a compact JWT",
    "expired": "The token has expired",
    "not_yet_valid": "The token is not valid yet",
    "bad_signature": "The token is not valid",
    "unknown_kid": "The token is not valid",
    "bad_alg": "The token is not valid",
    "crit": "Tokens with critical header parameters are not accepted",
    "bad_claims": "The token's claims are not valid",
    "revoked": "The token has been revoked",
    "too_large": "The token is too large",
    "multiple_headers": "Send exactly one Authorization header",
    "query_token": "Tokens in the URL are refused; send them in the Authorization header",
    "too_long_lived": "The token is valid for longer than this gateway accepts",
}


def refusal(reason: Reason, detail: str | None = None) -> TokenRefused:
    challenge = MISSING_CHALLENGE if reason == "missing" else INVALID_CHALLENGE
    return TokenRefused(detail or _MESSAGES[reason], reason,
                        headers={"WWW-Authenticate": challenge})


class AuthStage:
    """Authenticator (headers -> Principal) and request stage (is there a Principal?)."""

    name = "auth"

    def __init__(self, verifier: Verifier,
                 metrics_hook: Callable[[str], None] | None = None) -> None:
        self.verifier = verifier
        self._metrics_hook = metrics_hook

    def on_failure(self, reason: Reason) -> None:
        """Every refusal passes here once: counted by reason, logged without the token."""
        log.debug("token refused: %s", reason)
        if self._metrics_hook is not None:
            self._metrics_hook(reason)

    async def authenticate(self, authorization: list[str], query_has_token: bool) -> Principal:
        """The caller's Principal; raises gateway.errors.Unauthorized."""
        try:
            token = self._token(authorization, query_has_token)
            return await self.verifier.verify(token)
        except AuthFailure as failure:
            self.on_failure(failure.reason)
            raise refusal(failure.reason, failure.detail) from None

    async def check(self, ctx: RequestContext) -> Decision:
        principal = ctx.principal
        if principal is None:
            return deny(refusal("missing"), "unauthenticated")
        if principal.expires_at <= time.time():
            return deny(refusal("expired"), "unauthenticated")
        return ALLOW

    def _token(self, authorization: list[str], query_has_token: bool) -> str:
        # A token in the URL is refused even beside a good header: it has already leaked
        # into access logs and browser history, and the client should learn that.
        if query_has_token:
            raise AuthFailure("query_token")
        if not authorization:
            raise AuthFailure("missing")
        if len(authorization) > 1:
            # Two headers invite a split between what a proxy checked and what we verify.
            raise AuthFailure("multiple_headers")
        scheme, _, token = authorization[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthFailure("malformed")
        if len(token) > self.verifier.max_token_bytes:
            raise AuthFailure("too_large")
        return token
