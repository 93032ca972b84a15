"""The arithmetic every limit shares, on exact cases."""

from __future__ import annotations

import pytest

from gateway.pipeline.ratelimit import gcra
from gateway.pipeline.ratelimit.gcra import Rate

RPM = Rate("requests", 3, gcra.MINUTE_S)


def test_a_full_burst_then_one_per_interval() -> None:
    tat, now = 0.0, 100.0
    for _ in range(3):
        assert gcra.wait(tat, now, RPM.increment(1), RPM.period) == 0.0
        tat = gcra.charge(tat, now, RPM.increment(1))
    assert gcra.wait(tat, now, RPM.increment(1), RPM.period) == pytest.approx(20.0)
    assert gcra.wait(tat, now + 20.0, RPM.increment(1), RPM.period) == 0.0


def test_an_exact_fit_is_not_refused_by_float_rounding() -> None:
    rate = Rate("requests", 7, gcra.MINUTE_S)  # 60/7 is not a binary fraction
    tat = 0.0
    for _ in range(7):
        assert gcra.wait(tat, 5.0, rate.increment(1), rate.period) == 0.0
        tat = gcra.charge(tat, 5.0, rate.increment(1))
    assert gcra.wait(tat, 5.0, rate.increment(1), rate.period) > 0


def test_refund_never_fills_past_capacity() -> None:
    rate = Rate("tokens", 1000, gcra.MINUTE_S)
    tat = gcra.charge(0.0, 10.0, rate.increment(100))
    assert gcra.refund(tat, 10.0, rate.increment(5000)) == 10.0
    assert rate.remaining(gcra.offset(10.0, 10.0)) == 1000


def test_a_charge_past_the_reservation_can_go_into_debt() -> None:
    rate = Rate("tokens", 1000, gcra.MINUTE_S)
    tat = gcra.charge(0.0, 0.0, rate.increment(1500))
    assert gcra.offset(tat, 0.0) == pytest.approx(90.0)
    assert rate.remaining(gcra.offset(tat, 0.0)) == 0
    assert gcra.wait(tat, 0.0, 0.0, rate.period) == pytest.approx(30.0)  # even 0 waits


def test_requests_spend_one_unit_and_tokens_the_reservation() -> None:
    assert RPM.units(500) == 1
    assert Rate("tokens_per_day", 10, gcra.DAY_S).units(500) == 500
