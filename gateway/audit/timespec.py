"""Times as people type them: `24h`, `7d`, `1700000000`, `2025-01-31T12:00:00Z`."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in `90s`, `15m`, `24h`, `7d`, `2w`; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return float(match[1]) * _UNITS[match[2]]


def parse_time(text: str, now: float) -> float:
    """Epoch seconds from epoch seconds, an ISO 8601 time (UTC unless it says), or a
    duration meaning that long before `now`."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a time")
        return number
    if _DURATION.fullmatch(text):
        return now - parse_duration(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time (epoch seconds, ISO 8601 or 24h)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
