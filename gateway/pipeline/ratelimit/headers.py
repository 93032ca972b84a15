"""OpenAI's x-ratelimit-* response headers.

OpenAI reports a requests limit and a tokens-per-minute limit: the limit, what remains
after this request, and the time until the bucket is back to full ("reset"), written as a
Go duration (`250ms`, `1s`, `8.64s`, `6m0s`, `1h2m3s`). The daily quota and the concurrency
limit have no OpenAI header, so they appear only in refusal messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.pipeline.ratelimit.gcra import Rate

_SUFFIX = {"requests": "requests", "tokens": "tokens"}


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it, rounded up to the millisecond so that a client
    waiting exactly that long finds the limit reset."""
    # The small subtraction keeps float noise (8.64 * 1000 = 8640.000000000001) from
    # rounding a whole millisecond up.
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    text = f"{secs}.{millis:03d}".rstrip("0") if millis else str(secs)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


def rate_headers(rates: tuple[Rate, ...], offsets: Mapping[str, float]) -> dict[str, str]:
    """Headers for the requests and tokens-per-minute limits among `rates`.

    `offsets` holds, per rate name, the seconds until that bucket is full again, taken after
    this request was charged (or, for a refusal, as it stands uncharged).
    """
    headers: dict[str, str] = {}
    for rate in rates:
        suffix = _SUFFIX.get(rate.name)
        if suffix is None:
            continue
        offset = offsets.get(rate.name, 0.0)
        headers[f"x-ratelimit-limit-{suffix}"] = str(rate.capacity)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(rate.remaining(offset))
        headers[f"x-ratelimit-reset-{suffix}"] = format_reset(offset)
    return headers
