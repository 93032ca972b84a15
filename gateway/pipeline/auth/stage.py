"""Auth stage: the Authorization header to a Principal, or a 401 that says why."""

from __future__ import annotations

from collections.abc import Callable

from gateway.context import Principal
from gateway.errors import Unauthorized
from gateway.pipeline.auth.verify import AuthFailure, Verifier

_CHALLENGE = 'Bearer realm="gateway"'


def _refusal(reason: str, message: str) -> Unauthorized:
    header = _CHALLENGE if reason == "missing" else \
        f'{_CHALLENGE}, error="invalid_token", error_description="{message}"'
    return Unauthorized(message, headers={"WWW-Authenticate": header})


class AuthStage:
    name = "auth"

    def __init__(self, verifier: Verifier,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.verifier = verifier
        self._on_failure = on_failure

    async def authenticate(self, authorization: list[str], query_has_token: bool) -> Principal:
        try:
            return await self.verifier.verify(self._token(authorization, query_has_token))
        except AuthFailure as failure:
            if self._on_failure is not None:
                self._on_failure(failure.reason)
            raise _refusal(failure.reason, failure.message) from None

    @staticmethod
    def _token(authorization: list[str], query_has_token: bool) -> str:
        if query_has_token:
            raise AuthFailure("query_token", "Tokens in the URL are refused; use the "
                              "Authorization header")
        if len(authorization) > 1:
            raise AuthFailure("multiple_headers", "Send exactly one Authorization header")
        if not authorization:
            raise AuthFailure("missing", "Missing bearer token in the Authorization header")
        scheme, _, token = authorization[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailure("malformed", "The Authorization header must be 'Bearer <token>'")
        return token.strip()
