"""URLs as logs, errors and metric labels may show them (without their passwords), and an
upstream's base URL."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*")


def redact(url: str) -> str:
    """The URL with any password (user info or ?password=) masked, for logs and errors.
    Works on the raw text: multi-host URLs (h1:5432,h2:5432) have no single port."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=userinfo + at + hosts, query=query))


def upstream_base(url: str) -> str:
    """An upstream as the pool addresses it: no trailing slash and no `/v1` (the gateway
    appends `/v1/...`, `/health`, `/tokenize` itself), as the guard's URL is taken."""
    base = url.rstrip("/")
    return base.removesuffix("/v1") if base.endswith("/v1") else base


def same_upstream_key(url: str) -> str:
    """Equal for two spellings of one upstream (scheme and host in any case, with or
    without a trailing slash or `/v1`)."""
    parts = urlsplit(upstream_base(url))
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{parts.port}{parts.path}"
