from __future__ import annotations

from gateway.audit.verify import VerifyResult
from gateway.report.data import aggregate
from gateway.report.html import render
from tests.audit.records import T0, make_record


def test_broken_chain_and_unchecked_chain_are_said_plainly() -> None:
    data = aggregate([make_record(i) for i in range(1, 30)], T0, T0 + 3600)
    broken = VerifyResult(False, 9, 9, "a" * 64, 11, "req-11", "record(s) 10 missing: deleted")
    page = render(data, broken, T0 + 3600)
    assert "Hash chain BROKEN at record 11: record(s) 10 missing: deleted" in page
    assert "Hash chain not checked" in render(data, None, T0 + 3600)


def test_values_from_the_log_are_escaped_and_keys_never_shown() -> None:
    records = [make_record(i, tier="<img src=x onerror=alert(1)>") for i in range(1, 10)]
    page = render(aggregate(records, T0, T0 + 3600), None, T0 + 3600)
    assert "<img" not in page and "&lt;img src=x" in page
    assert records[0].key_id not in page and "prompt_hash" not in page


def test_an_empty_period_renders_without_charts_of_nothing() -> None:
    page = render(aggregate([], T0, T0 + 86400), None, T0 + 86400)
    assert page.count("no data in this period") >= 9
    assert "<b>0</b>requests" in page
