"""The transparency report as one self-contained HTML page: inline CSS, inline SVG charts,
no scripts, nothing fetched. It shows aggregates only: no key ids, no prompts."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from html import escape

from gateway.audit.verify import VerifyResult
from gateway.report.data import ALLOW, ReportData
from gateway.report.svg import Series, bar_chart, line_chart, percent, stacked_bar_chart

TOP = 7  # series beyond this many are folded into "other"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; background: #fff; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .ok { color: #0a6b2d; } .broken { color: #b00020; font-weight: bold; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 16px; min-width: 140px; }
.card b { display: block; font-size: 24px; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
svg.chart { max-width: 100%; height: auto; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
table { border-collapse: collapse; margin-top: 24px; font-size: 14px; }
th, td { border-bottom: 1px solid #eee; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
footer { margin-top: 32px; color: #555; font-size: 13px; }
"""


def _fold(table: Mapping[str, Sequence[int]], n: int, first: str | None = None) -> list[Series]:
    """The TOP largest series by total (with `first` leading if present), the rest "other"."""
    ranked = sorted(table, key=lambda k: (k != first, -sum(table[k]), k))
    kept = ranked[:TOP]
    series = [Series(k, list(table[k])) for k in kept]
    rest = ranked[TOP:]
    if rest:
        series.append(Series("other", [sum(table[k][i] for k in rest) for i in range(n)]))
    return series


def _time_labels(data: ReportData) -> list[str]:
    if data.bucket_s >= 86400:
        fmt = "%m-%d"
    elif data.until - data.since > 86400:
        fmt = "%d %H:%M"
    else:
        fmt = "%H:%M"
    return [time.strftime(fmt, time.gmtime(t)) for t in data.bucket_starts]


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}</figure>"


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _integrity(result: VerifyResult | None) -> str:
    if result is None:
        return '<p class="meta">Hash chain not checked.</p>'
    if result.ok:
        return (f'<p class="ok">Hash chain intact: {result.checked} records verified end to '
                f"end; head <code>{escape(result.head)}</code>.</p>")
    return (f'<p class="broken">Hash chain BROKEN at record {result.broken_seq}: '
            f"{escape(result.reason or '')}. Figures below may be incomplete.</p>")


def _stacked_counter(rows: Mapping[str, Counter[str]], first: str | None) -> tuple[
        list[str], list[Series]]:
    labels = sorted(rows, key=lambda k: -sum(rows[k].values()))
    names: Counter[str] = Counter()
    for counts in rows.values():
        names.update(counts)
    order = sorted(names, key=lambda k: (k != first, -names[k], k))
    table = {name: [rows[label][name] for label in labels] for name in order}
    return labels, _fold(table, len(labels), first)


def _sections(data: ReportData) -> list[str]:
    labels, n = _time_labels(data), data.n_buckets
    tiers, by_tier = _stacked_counter(data.tier_decision, ALLOW)
    categories, by_action = _stacked_counter(data.category_action, "allow")
    reasons = data.refusal_reasons.most_common(10)
    limits = data.limit_refusals.most_common()
    wm_tiers = sorted(data.watermark_tier)
    wm_time = [c.share for c in data.watermark_time]
    tier_rows = []
    for tier in sorted(data.tier_total, key=lambda t: -data.tier_total[t]):
        total, refused = data.tier_total[tier], data.tier_refused[tier]
        cov = data.watermark_tier[tier].share if tier in data.watermark_tier else float("nan")
        tier_rows.append((tier, total, refused, percent(refused / total), data.tokens_in[tier],
                          data.tokens_out[tier], percent(cov)))
    return [
        "<h2>Traffic and decisions</h2><div class=grid>",
        _figure("Requests by tier over time",
                stacked_bar_chart("Requests by tier over time", labels,
                                  _fold(data.by_tier_time, n))),
        _figure("Decisions over time",
                stacked_bar_chart("Decisions over time", labels,
                                  _fold(data.by_decision_time, n, ALLOW))),
        _figure("Decisions by tier", stacked_bar_chart("Decisions by tier", tiers, by_tier)),
        "<div>" + _table(("tier", "requests", "refused", "refused %", "tokens in",
                          "tokens out", "watermarked"), tier_rows) + "</div>",
        "</div><h2>Categories</h2><div class=grid>",
        _figure("Matched categories over time",
                line_chart("Categories over time", labels, _fold(data.by_category_time, n))),
        _figure("Classifier action by category",
                stacked_bar_chart("Action by category", categories, by_action)),
        "</div><h2>Top refusal reasons</h2>",
        _figure("Refusals by reason (top 10)",
                bar_chart("Refusal reasons", [r for r, _ in reasons], [c for _, c in reasons],
                          width=1000, series="refusals")),
        "<h2>Rate-limit pressure</h2><div class=grid>",
        _figure("Refusals by limit kind",
                bar_chart("Limit refusals by kind", [k for k, _ in limits], [c for _, c in limits],
                          series="refusals")),
        _figure("Limit refusals over time",
                stacked_bar_chart("Limit refusals over time", labels, _fold(data.limit_time, n))),
        "</div><h2>Watermark coverage</h2><div class=grid>",
        _figure("Share of allowed text responses watermarked, by tier",
                bar_chart("Watermark coverage by tier", wm_tiers,
                          [data.watermark_tier[t].share for t in wm_tiers], fmt=percent,
                          series="coverage", top=1.0)),
        _figure("Watermark coverage over time",
                line_chart("Watermark coverage over time", labels, [Series("coverage", wm_time)],
                           fmt=percent, top=1.0)),
        "</div>",
    ]


def render(data: ReportData, integrity: VerifyResult | None, generated: float) -> str:
    cov = data.coverage()
    cards = [("requests", str(data.total)),
             ("refused", f"{data.refused} ({percent(data.refused / data.total)})"
              if data.total else "0"),
             ("distinct keys", str(len(data.keys))),
             ("watermark coverage", percent(cov.share)),
             ("tokens in / out", f"{sum(data.tokens_in.values())} / "
                                 f"{sum(data.tokens_out.values())}")]
    versions = ", ".join(f"{v} ({c})" for v, c in data.policy_versions.most_common(5)) or "-"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<title>Gateway transparency report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Gateway transparency report</h1>",
        f'<p class="meta">{_utc(data.since)} to {_utc(data.until)}, in buckets of '
        f"{data.bucket_s // 60} minutes · generated {_utc(generated)} · policy versions: "
        f"{escape(versions)}</p>",
        _integrity(integrity),
        '<div class="cards">' + "".join(f"<div class=card><b>{escape(v)}</b>{escape(k)}</div>"
                                        for k, v in cards) + "</div>",
        *_sections(data),
        "<footer><p>Refused: the gateway's decision was neither <code>allow</code> nor "
        "<code>flag</code> (a flagged answer is served). A refusal reason is the decision "
        "with its limit kind or matched categories. Watermark coverage: among served 2xx "
        "chat and completion responses, the share that carried "
        "a watermark. Keys are counted, never shown; prompts are not part of this report."
        "</p><p>Self-contained: no scripts, nothing loaded from the network.</p></footer>",
        "</body></html>",
    ]
    return "".join(parts)
