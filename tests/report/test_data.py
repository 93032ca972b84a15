from __future__ import annotations

from gateway.report.data import aggregate, bucket_width, refusal_reason
from tests.audit.records import T0, make_record


def test_bucket_width_keeps_charts_readable() -> None:
    assert bucket_width(3600) == 300
    assert bucket_width(86400) == 3600
    assert bucket_width(7 * 86400) == 6 * 3600
    assert bucket_width(10 * 365 * 86400) == 7 * 86400


def test_aggregates_by_tier_decision_limit_and_watermark() -> None:
    records = [make_record(i) for i in range(1, 85)]  # 10 s apart from T0 + 10
    data = aggregate(records, T0, T0 + 3600)
    assert data.total == 84 and data.bucket_s == 300
    assert sum(data.tier_total.values()) == 84 and data.tier_total["public"] == 28
    assert sum(sum(row) for row in data.by_tier_time.values()) == 84
    refused_by_limit = [i for i in range(1, 85) if i % 7 == 0]
    blocked = [i for i in range(1, 85) if i % 7 and i % 11 == 0]
    assert data.refused == len(refused_by_limit) + len(blocked)
    assert sum(data.limit_refusals.values()) == len(refused_by_limit)
    assert data.refusal_reasons["block (cyber)"] == len(blocked)
    allowed = [i for i in range(1, 85) if i % 7 and i % 11]
    marked = [i for i in allowed if i % 4]
    cov = data.coverage()
    assert (cov.marked, cov.eligible) == (len(marked), len(allowed))
    assert data.category_action["cyber"]["block"] == len(blocked)
    assert len(data.keys) == 5


def test_refusal_reason_names_the_limit_or_categories() -> None:
    assert refusal_reason(make_record(7)).startswith("rate_limited (")
    assert refusal_reason(make_record(11)) == "block (cyber)"
    assert refusal_reason(make_record(1, decision="tier_denied")) == "tier_denied"


def test_flagged_requests_are_served_not_refused() -> None:
    """A flag serves the answer (and records it); only other decisions are refusals."""
    records = [make_record(1, decision="flag", categories=("cyber",), action="flag"),
               make_record(2, decision="output_blocked", categories=("cyber",),
                           action="block")]
    data = aggregate(records, T0, T0 + 3600)
    assert data.refused == 1
    assert data.refusal_reasons == {"output_blocked (cyber)": 1}
    assert data.coverage().eligible == 1  # the flagged answer counts for the watermark


def test_charts_start_at_the_first_record_of_a_longer_period() -> None:
    """`--since 0` drew 2,900 empty weekly buckets (a 2 MB page) before the data."""
    records = [make_record(i) for i in range(1, 85)]  # T0 + 10 s .. T0 + 840 s
    data = aggregate(records, 0.0, T0 + 3600)
    assert data.since == 0.0 and data.total == 84  # the period asked for, all records
    assert data.bucket_s == 300 and data.n_buckets <= 14
    assert sum(sum(row) for row in data.by_tier_time.values()) == 84
    assert aggregate([], 0.0, T0).since == 0.0  # no records: the period as asked
