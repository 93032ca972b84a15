"""Aggregate audit records into the numbers the transparency report shows.

Definitions (stated in the report too):
- refused: the gateway's decision was neither "allow" nor "flag" (policy, classifier,
  output moderation or limit said no; a flagged request is served);
- a refusal reason is the decision label, with the limit kind or matched categories;
- watermark coverage: among served (allowed or flagged) responses with status 2xx on
  text routes (chat, completions), the share that carried a watermark key id.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.audit.record import AuditRecord

ALLOW = "allow"
SERVED = frozenset({ALLOW, "flag"})
TEXT_ROUTES = frozenset({"chat", "completions"})
BUCKETS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 48


def bucket_width(span: float) -> int:
    """The smallest round bucket that cuts `span` seconds into at most MAX_BUCKETS."""
    return next((b for b in BUCKETS if span / b <= MAX_BUCKETS), BUCKETS[-1])


def _series() -> defaultdict[str, list[int]]:
    return defaultdict(list)


@dataclass
class Coverage:
    marked: int = 0
    eligible: int = 0

    @property
    def share(self) -> float:
        return self.marked / self.eligible if self.eligible else float("nan")


@dataclass
class ReportData:
    since: float
    until: float
    bucket_s: int
    origin: float = 0.0  # `since` rounded down to a whole bucket, so labels are round
    total: int = 0
    refused: int = 0
    keys: set[str] = field(default_factory=set)
    by_tier_time: defaultdict[str, list[int]] = field(default_factory=_series)
    by_decision_time: defaultdict[str, list[int]] = field(default_factory=_series)
    by_category_time: defaultdict[str, list[int]] = field(default_factory=_series)
    limit_time: defaultdict[str, list[int]] = field(default_factory=_series)
    tier_total: Counter[str] = field(default_factory=Counter)
    tier_refused: Counter[str] = field(default_factory=Counter)
    tier_decision: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    category_action: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    refusal_reasons: Counter[str] = field(default_factory=Counter)
    limit_refusals: Counter[str] = field(default_factory=Counter)
    limit_checked: Counter[str] = field(default_factory=Counter)  # per tier
    tokens_in: Counter[str] = field(default_factory=Counter)
    tokens_out: Counter[str] = field(default_factory=Counter)
    watermark_tier: defaultdict[str, Coverage] = field(
        default_factory=lambda: defaultdict(Coverage))
    watermark_time: list[Coverage] = field(default_factory=list)
    policy_versions: Counter[str] = field(default_factory=Counter)

    @property
    def n_buckets(self) -> int:
        return max(1, -int(-(self.until - self.origin) // self.bucket_s))

    @property
    def bucket_starts(self) -> list[float]:
        return [self.origin + i * self.bucket_s for i in range(self.n_buckets)]

    def coverage(self) -> Coverage:
        total = Coverage()
        for c in self.watermark_tier.values():
            total.marked += c.marked
            total.eligible += c.eligible
        return total

    def _bump(self, table: defaultdict[str, list[int]], key: str, i: int) -> None:
        row = table[key]
        if not row:
            row.extend([0] * self.n_buckets)
        row[i] += 1

    def add(self, r: AuditRecord) -> None:
        if r.route.startswith("/admin/"):
            return  # an admin call, audited but not traffic
        i = min(self.n_buckets - 1, max(0, int((r.time - self.origin) // self.bucket_s)))
        self.total += 1
        self.keys.add(r.key_id)
        self.tier_total[r.tier] += 1
        self._bump(self.by_tier_time, r.tier, i)
        self._bump(self.by_decision_time, r.decision, i)
        self.tier_decision[r.tier][r.decision] += 1
        self.tokens_in[r.tier] += r.prompt_tokens
        self.tokens_out[r.tier] += r.completion_tokens
        self.policy_versions[r.policy_version or "-"] += 1
        for category in r.categories:
            self._bump(self.by_category_time, category, i)
            self.category_action[category][r.action] += 1
        if r.limit != "none":
            self.limit_checked[r.tier] += 1
        if r.limit.startswith("refused:"):
            kind = r.limit.removeprefix("refused:")
            self.limit_refusals[kind] += 1
            self._bump(self.limit_time, kind, i)
        if r.decision not in SERVED:
            self.refused += 1
            self.tier_refused[r.tier] += 1
            self.refusal_reasons[refusal_reason(r)] += 1
        elif 200 <= r.status < 300 and r.route in TEXT_ROUTES:
            marked = r.watermark_key_id is not None
            for c in (self.watermark_tier[r.tier], self.watermark_time[i]):
                c.eligible += 1
                c.marked += marked


def refusal_reason(r: AuditRecord) -> str:
    if r.limit.startswith("refused:"):
        return f"{r.decision} ({r.limit.removeprefix('refused:')})"
    if r.categories:
        return f"{r.decision} ({', '.join(sorted(r.categories))})"
    return r.decision


def aggregate(records: Iterable[AuditRecord], since: float, until: float) -> ReportData:
    """`records` in log order (time rises with it). The charts start at the first record
    when the period starts earlier: `--since 0` drew 2,900 empty weekly buckets (a 2 MB
    page) in front of the data."""
    records = iter(records)
    first = next(records, None)
    start = since if first is None else min(max(since, first.time), until)
    width = bucket_width(until - start)
    data = ReportData(since=since, until=until, bucket_s=width, origin=start // width * width)
    data.watermark_time = [Coverage() for _ in range(data.n_buckets)]
    for record in itertools.chain((first,) if first is not None else (), records):
        data.add(record)
    return data
