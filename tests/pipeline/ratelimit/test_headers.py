"""OpenAI's x-ratelimit-* headers and their Go-style durations."""

from __future__ import annotations

import pytest

from gateway.pipeline.ratelimit import Limits, format_reset
from gateway.pipeline.ratelimit.headers import rate_headers


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0s"),
    (-3.0, "0s"),
    (0.0004, "1ms"),  # rounded up: waiting that long must be enough
    (0.25, "250ms"),
    (0.999, "999ms"),
    (1.0, "1s"),
    (1.5, "1.5s"),
    (8.64, "8.64s"),  # not 8.641s: float noise is not a millisecond
    (59.9991, "1m0s"),
    (60.0, "1m0s"),
    (360.0, "6m0s"),
    (3723.0, "1h2m3s"),
    (3600.0, "1h0m0s"),
    (86_400.0, "24h0m0s"),
])
def test_format_reset(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_headers_for_requests_and_tokens() -> None:
    limits = Limits(requests_per_minute=100, tokens_per_minute=1000)
    assert rate_headers(limits.rates(), {"requests": 0.6, "tokens": 6.0}) == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "600ms",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }


@pytest.mark.parametrize(("limits", "names"), [
    (Limits(), set()),
    (Limits(concurrent_requests=3, tokens_per_day=10), set()),  # no OpenAI header for these
    (Limits(requests_per_minute=5), {"limit-requests", "remaining-requests", "reset-requests"}),
    (Limits(tokens_per_minute=5), {"limit-tokens", "remaining-tokens", "reset-tokens"}),
])
def test_headers_only_for_limits_that_are_set(limits: Limits, names: set[str]) -> None:
    headers = rate_headers(limits.rates(), {})
    assert {name.removeprefix("x-ratelimit-") for name in headers} == names


def test_remaining_never_negative_while_in_debt() -> None:
    limits = Limits(tokens_per_minute=1000)
    headers = rate_headers(limits.rates(), {"tokens": 90.0})  # 500 tokens over
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "1m30s"
