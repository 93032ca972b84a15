"""The decision audit log: one hash-chained record per request, written off the hot path.

    record.py   AuditRecord, the canonical form and the chain hash; AuditKeys
    build.py    AuditRecord from a RequestContext at response end
    store.py    the AuditStore seam and its SQLite backend
    log.py      AuditLog: bounded queue, writer thread, group commit; AuditSettings
    verify.py   verify_chain: edits, deletions, reordering, truncation past an anchor
    http.py     GET /admin/v1/audit
    cli.py      `gateway audit verify`
"""

from __future__ import annotations

from aiohttp import web

from gateway.audit.log import AuditLog, AuditSettings
from gateway.audit.record import AuditKeys, AuditRecord, ChainedRecord
from gateway.audit.store import AuditStore, QueryFilter, SqliteStore
from gateway.audit.verify import VerifyResult, verify_chain

AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)
# AuditKeys(load_secret(home, "audit")): key ids for audit records and log lines alike.
AUDIT_KEYS: web.AppKey[AuditKeys] = web.AppKey("audit_keys", AuditKeys)

__all__ = [
    "AUDIT",
    "AUDIT_KEYS",
    "AuditKeys",
    "AuditLog",
    "AuditRecord",
    "AuditSettings",
    "AuditStore",
    "ChainedRecord",
    "QueryFilter",
    "SqliteStore",
    "VerifyResult",
    "verify_chain",
]
