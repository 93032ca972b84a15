"""Every failure the gateway reports to a client, as one tree.

    GatewayError                      500 internal_error
    ├── BadRequest                    400 invalid_request_error
    │   ├── InvalidJSON               400 invalid_request_error / invalid_json
    │   └── UnsupportedMediaType      415 invalid_request_error
    ├── Unauthorized                  401 authentication_error
    │   └── TokenRefused              401 authentication_error (with its reason label)
    ├── Forbidden                     403 permission_error
    ├── NotFound                      404 invalid_request_error
    │   └── ModelNotFound             404 invalid_request_error / model_not_found
    ├── MethodNotAllowed              405 invalid_request_error
    ├── RequestTimeout                408 invalid_request_error / request_timeout
    ├── PayloadTooLarge               413 invalid_request_error
    ├── RateLimited                   429 rate_limit_error / rate_limit_exceeded
    ├── UpstreamStatus                (upstream's 4xx, normalised, passed through)
    ├── BadGateway                    502 upstream_error
    ├── Unavailable                   503 service_unavailable
    │   └── AuditUnavailable          503 service_unavailable / audit_unavailable
    └── GatewayTimeout                504 upstream_timeout

Each error knows its status and OpenAI error type; `errors.middleware` in app.py
is the one place that renders them as `{"error": {message, type, param, code}}`.
Messages are written for clients: they never carry tokens, secrets or prompts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from gateway.visible import visible


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def http_status(self) -> int:
        return self.status

    @property
    def error_type(self) -> str:
        return self.type

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class InvalidJSON(BadRequest):
    default_code = "invalid_json"


class UnsupportedMediaType(BadRequest):
    status = 415
    default_code = "unsupported_media_type"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class TokenRefused(Unauthorized):
    """A refused token. `reason` is its gateway_auth_failures_total label, which the
    request's log line repeats (the token itself is never logged)."""

    def __init__(self, message: str, reason: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.reason = reason


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    default_code = "forbidden"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeout(GatewayError):
    """The client took longer than timeouts.client_body_s to send its body (slow-loris)."""

    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class ExpectationFailed(GatewayError):
    status = 417
    type = "invalid_request_error"
    default_code = "expectation_failed"


class PolicyInvalid(GatewayError):
    """An admin's reload found the policy files invalid (the last good policy serves on)."""

    status = 422
    type = "invalid_request_error"
    default_code = "policy_invalid"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamStatus(GatewayError):
    """An upstream 4xx (or 429) passed through with its body normalised."""

    def __init__(self, status: int, message: str, *, type_: str, param: str | None,
                 code: str | None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self._status = status
        self._type = type_

    @property
    def http_status(self) -> int:
        return self._status

    @property
    def error_type(self) -> str:
        return self._type


class BadGateway(GatewayError):
    status = 502
    type = "upstream_error"
    default_code = "bad_gateway"


class Unavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    default_code = "service_unavailable"


class AuditUnavailable(Unavailable):
    default_code = "audit_unavailable"

    def __init__(self) -> None:
        super().__init__("The answer was withheld: its audit record could not be written")


class GatewayTimeout(GatewayError):
    status = 504
    type = "upstream_timeout"
    default_code = "upstream_timeout"


# The error types OpenAI's API uses. vLLM names its own after the status ("BadRequestError",
# "TooManyRequestsError", ...); those become OpenAI's type for that status.
_OPENAI_TYPES = frozenset({"invalid_request_error", "authentication_error", "permission_error",
                           "rate_limit_error", "server_error", "insufficient_quota",
                           "requests", "tokens"})
_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error",
                   429: "rate_limit_error"}


UPSTREAM_MESSAGE_CHARS = 2000  # vLLM's longest own messages are a few hundred characters


def shown(value: str, limit: int = 64) -> str:
    """A client's value as an error message may quote it: bounded, so a megabyte-long
    model name does not come back in full (and fill logs), and with what would not show
    (NUL, terminal escapes, bidi overrides, zero-width and tag characters) escaped, so the
    message reads as what was sent (visible.py)."""
    return visible(value if len(value) <= limit else value[:limit] + "...")


def normalise_upstream_error(status: int, raw: bytes,
                             headers: Mapping[str, str] | None = None) -> UpstreamStatus:
    """Turn any of vLLM's error bodies into OpenAI's shape.

    vLLM has used `{"object": "error", "message", "type", "param", "code": 400}` (flat),
    `{"error": {..., "code": 404}}` (nested, integer code) and plain text; clients
    written against OpenAI expect a nested object with a string-or-null code.
    """
    message, type_, param, code = f"upstream returned HTTP {status}", "", None, None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        nested = data.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else data
        if isinstance(inner.get("message"), str):
            # Passed on to the client and its logs: bounded, and what would not show
            # (terminal escapes, bidi overrides) escaped, as for a client's own values.
            message = shown(inner["message"], UPSTREAM_MESSAGE_CHARS)
        if isinstance(inner.get("type"), str):
            type_ = inner["type"]
        if isinstance(inner.get("param"), str):
            param = inner["param"]
        if isinstance(inner.get("code"), str):
            code = inner["code"]
    if status == 404 and code is None and param == "model":
        code = "model_not_found"
    if status == 429 and code is None:
        code = "rate_limit_exceeded"
    if type_ not in _OPENAI_TYPES:
        type_ = _TYPE_BY_STATUS.get(status, "invalid_request_error")
    return UpstreamStatus(status, message, type_=type_, param=param, code=code,
                          headers=headers)
