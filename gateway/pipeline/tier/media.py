"""Media parts: what a tier lets a request show the model besides text.

The classifiers read text only, and an image (or audio, video, a file) can carry words
they never see. So a tier takes no media unless it names the kinds it does
(`request.media`). Media by URL is fetched by vLLM from inside the serving network, where
an unchecked URL would let a caller reach what only the backend can (cloud metadata,
internal services): a URL must name one of the tier's `request.media_hosts`. Inline
`data:` URLs are fetched by nobody. `embeds` (image_embeds) hands vLLM a serialized tensor
to load: only for callers you trust.
"""

from __future__ import annotations

import fnmatch
import urllib.parse
from typing import Any

from gateway.errors import Forbidden
from gateway.pipeline import ALLOW, Decision, deny
from gateway.pipeline.shape import MEDIA_KINDS, media_url
from gateway.policy.spec import RequestCaps

# A URL parsers may read differently (a backslash as a slash, a space, a control
# character) is refused rather than guessed at: the fetcher must reach the host checked.
_UNSAFE = frozenset("\\ \t\r\n") | {chr(c) for c in range(32)} | {chr(127)}


def fetch_allowed(url: str, hosts: tuple[str, ...]) -> bool:
    """A data: URL, or http(s) to one of `hosts` (lower-case globs; a URL with a port must
    match a `host:port` entry), without user info or characters parsers disagree on."""
    if url[:5].lower() == "data:":
        return True
    if not url.isascii() or any(c in _UNSAFE for c in url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname
    if parts.scheme.lower() not in ("http", "https") or not host or "@" in parts.netloc:
        return False
    target = host if port is None else f"{host}:{port}"
    return any(fnmatch.fnmatchcase(target, glob) for glob in hosts)


def check_media(caps: RequestCaps, messages: list[dict[str, Any]], tier: str) -> Decision:
    """403 naming the part: a kind the tier does not take, or a URL it may not fetch."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = MEDIA_KINDS.get(part["type"])
            if kind is None:
                continue
            param = f"messages[{i}].content[{j}]"
            if kind not in caps.media:
                return deny(Forbidden(f"tier '{tier}' does not allow {kind} input",
                                      param=param, code="media_not_allowed"), "forbidden")
            url = media_url(part)
            if url is not None and not fetch_allowed(url, caps.media_hosts):
                return deny(Forbidden(
                    f"tier '{tier}' takes media by URL only from its media hosts; send "
                    f"the content inline as a data: URL", param=param,
                    code="media_url_not_allowed"), "forbidden")
    return ALLOW
