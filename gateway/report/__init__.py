"""`gateway report [--since 24h] [--db PATH] --out FILE.html`: the transparency report.

    data.py   audit records -> aggregates (by tier, decision, category, limit, time)
    svg.py    small inline-SVG charts (bar, stacked bar, line)
    html.py   the self-contained page
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit.cli import READ_ERRORS, store_location
from gateway.audit.store import describe


def add_report_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="transparency report from the audit log (HTML)")
    p.add_argument("--since", default="24h",
                   help="start of the period: a duration back from now (24h, 7d), "
                   "epoch seconds or ISO 8601 (default 24h)")
    p.add_argument("--until", help="end of the period, in the same forms as --since "
                   "(default now); must be later than --since")
    p.add_argument("--db", help="audit database: a SQLite file or a postgresql:// URL "
                   "(default GATEWAY_AUDIT_URL, else GATEWAY_HOME/audit.sqlite3)")
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p.set_defaults(run=run_report)


def build_report(db: str | Path, since: float, until: float, now: float | None = None) -> str:
    """Verify the chain, aggregate the period, render the page."""
    from gateway.audit.store import open_store
    from gateway.audit.verify import verify_rows
    from gateway.report.data import aggregate
    from gateway.report.html import render

    store = open_store(db, readonly=True)
    try:
        integrity = verify_rows(store.rows())
        data = aggregate(store.scan(since, until), since, until)
    finally:
        store.close()
    return render(data, integrity, time.time() if now is None else now)


def _utc(when: float) -> str:
    try:
        return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # beyond what datetime can show
        return f"{when:g} epoch seconds"


def run_report(args: argparse.Namespace) -> int:
    from gateway.audit.timespec import parse_time

    now = time.time()
    try:
        # Both count back from now, as in the admin audit query: `--since 1h --until 2h`
        # is an empty period, not the hour before "2h".
        until = parse_time(args.until, now) if args.until else now
        since = parse_time(args.since, now)
    except ValueError as exc:
        print(f"gateway report: {exc}", file=sys.stderr)
        return 2
    if since >= until:
        print(f"gateway report: --since {args.since} ({_utc(since)}) is not before "
              f"--until {args.until or 'now'} ({_utc(until)})", file=sys.stderr)
        return 2
    where = store_location(args.db)
    try:
        page = build_report(where, since, until, now)
    except READ_ERRORS as exc:
        print(f"{describe(where)}: cannot read the audit log: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out} ({len(page) // 1024} KiB) for {describe(where)}")
    return 0
