from __future__ import annotations

import pytest

from gateway.audit.timespec import parse_duration, parse_time


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), ("2w", 1209600), ("1.5h", 5400),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "3y", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_times() -> None:
    assert parse_time("1700000000", now=0) == 1_700_000_000
    assert parse_time("24h", now=100_000) == 100_000 - 86400
    assert parse_time("2023-11-14T22:13:20Z", now=0) == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20", now=0) == 1_700_000_000  # UTC when unsaid
    assert parse_time("2023-11-14T23:13:20+01:00", now=0) == 1_700_000_000
    for bad in ("inf", "nan", "tomorrow"):
        with pytest.raises(ValueError):
            parse_time(bad, now=0)
