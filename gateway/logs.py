"""Logging: one JSON object per line, secrets scrubbed before anything is formatted.

`configure_logging(level)` installs one stderr handler on the root logger carrying a
`Redactor` filter and the `JsonFormatter`. Request log lines carry the same ids as the
audit record (request_id, key_id) plus OpenTelemetry GenAI attribute names, so a
collector can map them without a custom parser: pass `extra=request_log_fields(...)`.

    log.info("request", extra=request_log_fields(ctx, status, duration, key_id=key_id))
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any

import orjson

from gateway.context import RequestContext
from gateway.visible import visible

REDACTED = "[redacted]"
_MIN_SECRET = 8  # shorter "secrets" would redact ordinary words
# Scrubbed strings remembered per Redactor: most fields of a request's line (tier, model,
# route, the caller's key id) repeat from line to line. Bounded in count and length.
_REMEMBERED = 4096
_REMEMBERED_CHARS = 256
_PATTERNS = (
    # Authorization header values.
    re.compile(r"(?i)(?P<keep>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"),
    # JWS/JWE compact form: the header is base64url JSON, so it starts with "eyJ".
    re.compile(r"\beyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2,4}"),
    # Anything else shaped like three long base64url segments.
    re.compile(r"\b[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),
    # Credentials in query strings.
    re.compile(r"(?i)(?P<keep>\b(?:access_token|token|api_key|key|secret)=)[^&\s\"']+"),
    # User info in URLs (http://user:password@host).
    re.compile(r"(?i)(?P<keep>\b[a-z][a-z0-9+.-]*://)[^/?#@\s]+(?=@)"),
)
_AUTH_SCHEME = re.compile(r"(?i)bearer|basic")
# gen_ai.operation.name of each route, as the GenAI semantic conventions spell it.
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
# Attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_HANDLER_MARK = "_gateway_handler"
_PLAIN = frozenset({int, float, bool})  # field types with nothing to scrub


class Redactor(logging.Filter):
    """Rewrites each record's message with tokens, JWTs and known secret values removed.

    The message is rendered (msg % args) and scrubbed here, before any formatter runs,
    and args are cleared, so no later handler can format the original values again.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len,
                               reverse=True)
        self._scrubbed: dict[str, str] = {}

    def scrub(self, text: str) -> str:
        known = self._scrubbed.get(text)
        if known is not None:
            return known
        clean = text
        for secret in self._secrets:
            clean = clean.replace(secret, REDACTED)
        clean = scrub_credentials(clean)
        if len(text) <= _REMEMBERED_CHARS:
            if len(self._scrubbed) >= _REMEMBERED:
                self._scrubbed.clear()
            self._scrubbed[text] = clean
        return clean

    def _deep(self, value: object) -> object:
        """Scrubbed copies of strings inside extra fields; the caller's objects are kept."""
        if isinstance(value, str):
            return self.scrub(value)
        if value is None or type(value) in _PLAIN:  # most fields: no ABC check
            return value
        if isinstance(value, Mapping):
            return {k: self._deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._deep(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        fields = record.__dict__
        # A request's line has a dozen extra fields: the common cases inline (this runs
        # once per request).
        remembered = self._scrubbed
        for name, value in fields.items():
            if name in _STANDARD:
                continue
            kind = type(value)
            if kind is str:
                known = remembered.get(value)
                fields[name] = known if known is not None else self.scrub(value)
            elif value is not None and kind not in _PLAIN:
                fields[name] = self._deep(value)
        # Exception text too; another handler may already have cached it unscrubbed.
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = text
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


def scrub_credentials(text: str) -> str:
    """`text` with anything shaped like a token, a JWT or URL user info redacted."""
    if not _may_hold_credentials(text):
        return text
    for pattern in _PATTERNS:
        text = pattern.sub(_replacement, text)
    return text


def _may_hold_credentials(text: str) -> bool:
    """What every pattern needs (an auth scheme's name, an "=", an "@", or the two dots of
    a JWT), checked in C: most strings logged (ids, names, labels) hold none, and the
    patterns themselves cost a few microseconds per string."""
    return ("=" in text or "@" in text or text.count(".") >= 2
            or _AUTH_SCHEME.search(text) is not None)


def _replacement(match: re.Match[str]) -> str:
    # Keep the name ("token=", "Bearer ") so the line still says what was there.
    keep = match.groupdict().get("keep")
    return (keep or "") + REDACTED


def env_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """The values of GATEWAY_SECRET_* variables, to be scrubbed wherever they appear."""
    env = os.environ if env is None else env
    return [value for name, value in env.items() if name.startswith("GATEWAY_SECRET_")]


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", ...extra fields} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name[0] != "_":
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        # orjson escapes control characters but not a bidi override or a zero-width space
        return visible(orjson.dumps(line, default=str).decode())


_QUOTED = re.compile(r'[ "=]')


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`: the same fields as the JSON lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{name}={_text_value(value)}"
                          for name, value in record.__dict__.items()
                          if name not in _STANDARD and not name.startswith("_"))
        line = super().format(record)
        if not fields:
            return line
        head, newline, trace = line.partition("\n")  # fields before any traceback
        return f"{head} {fields}{newline}{trace}"


def _text_value(value: object) -> str:
    """A plain string as is; anything else, and a string a reader could mistake for more
    than one value (a space, a quote, an `=`, a newline that starts a forged line), as
    JSON with what would not show escaped."""
    if isinstance(value, str) and value and value.isprintable() and not _QUOTED.search(value):
        return value
    return visible(orjson.dumps(value, default=str).decode())


_last_second: tuple[int, str] = (-1, "")  # replaced whole: a thread reads both or neither


def _rfc3339(created: float) -> str:
    # Lines come many a second: the formatted second is kept (strftime is the cost).
    global _last_second
    second = int(created)
    if second != _last_second[0]:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int(created % 1 * 1000):03d}Z"


def configure_logging(level: str, json: bool = True, *, stream: IO[str] | None = None,
                      secrets: Iterable[str] = ()) -> logging.Handler:
    """Install the gateway's root handler (replacing one installed earlier) and return it.

    `secrets` adds literal values to scrub, on top of GATEWAY_SECRET_* from the
    environment; pass secrets read from files too (e.g. their hex form).
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(Redactor([*env_secrets(), *secrets]))
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler


def request_log_fields(ctx: RequestContext, status: int, duration: float, *,
                       key_id: str | None = None) -> dict[str, Any]:
    """The `extra` for the one log line per request. `key_id` is the audit record's keyed
    hash of the subject (AuditKeys.key_id), never the subject itself."""
    genai = genai_fields(ctx)
    return {
        "request_id": ctx.request_id,
        "key_id": key_id or "-",
        "tier": ctx.tier,
        "model": ctx.model,
        "route": ctx.route,
        "decision": ctx.decision,
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "tokens": {"prompt": genai["gen_ai.usage.input_tokens"],
                   "completion": genai["gen_ai.usage.output_tokens"]},
        **genai,
    }


def genai_fields(ctx: RequestContext) -> dict[str, Any]:
    """The request's OpenTelemetry GenAI attributes, shared by its log line and its span
    (gateway/tracing.py), so both always tell the same story."""
    return {
        "gen_ai.system": "vllm",
        "gen_ai.operation.name": OPERATIONS.get(ctx.route, ctx.route),
        "gen_ai.request.model": ctx.model,
        "gen_ai.usage.input_tokens": ctx.usage.prompt_tokens or ctx.prompt_tokens or 0,
        "gen_ai.usage.output_tokens": ctx.usage.completion_tokens,
    }
