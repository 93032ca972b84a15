"""`gateway audit verify [--db PATH|URL] [--anchor SEQ:HASH]`: check the hash chain end to end.

Exit 0 when intact (printing the head to keep as a future anchor), 1 when broken (naming
the first broken record and why, or the anchor the chain no longer holds), 2 when there is
no database to check.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from gateway.audit.log import AuditSettings
from gateway.audit.postgres import is_postgres_url


def default_db() -> Path:
    """GATEWAY_HOME/audit.sqlite3, GATEWAY_HOME defaulting to .gateway/ as in settings."""
    return AuditSettings().resolve(Path(os.environ.get("GATEWAY_HOME") or ".gateway"))


def store_location(arg: str | None) -> str | Path:
    """--db: a SQLite path or a postgresql:// URL; else GATEWAY_AUDIT_URL; else the file."""
    where = arg or os.environ.get("GATEWAY_AUDIT_URL")
    if where is None:
        return default_db()
    return where if is_postgres_url(where) else Path(where)


READ_ERRORS = (OSError, sqlite3.Error, RuntimeError)


def add_audit_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="the decision audit log")
    cmds = p.add_subparsers(dest="audit_command", required=True)
    verify = cmds.add_parser("verify", help="check the audit log's hash chain end to end")
    verify.add_argument("--db", help="audit database: a SQLite file or a postgresql:// URL "
                        "(default GATEWAY_AUDIT_URL, else GATEWAY_HOME/audit.sqlite3)")
    verify.add_argument("--anchor", metavar="SEQ:HASH",
                        help="a head printed by an earlier verify; fails if it is gone")
    p.set_defaults(run=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    from gateway.audit.store import describe
    from gateway.audit.verify import parse_anchor, verify_chain

    where = store_location(args.db)
    path = describe(where)
    try:
        anchor = parse_anchor(args.anchor) if args.anchor else None
    except ValueError as exc:
        print(f"gateway audit verify: {exc}", file=sys.stderr)
        return 2
    try:
        result = verify_chain(where, anchor)
    except READ_ERRORS as exc:
        print(f"{path}: cannot read the audit log: {exc}", file=sys.stderr)
        return 2
    if result.ok:
        print(f"{path}: ok, {result.checked} records, chain intact; head {result.head}")
        return 0
    who = f" (request {result.broken_request_id})" if result.broken_request_id else ""
    if result.anchor_failed:  # the chain is whole; it is just not the one anchored
        verified = (f"the chain as it stands verifies ({result.checked} records, head "
                    f"{result.head}) but is not the one the anchor was taken from")
    else:
        verified = f"{result.checked} records before it verified, last good {result.head}"
    print(f"{path}: BROKEN at record {result.broken_seq}{who}: {result.reason}; {verified}",
          file=sys.stderr)
    return 1
