"""Plausible audit records for tests, varied but deterministic."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.audit.record import AuditRecord

T0 = 1_700_000_000.0
TIERS = ("public", "research", "internal")
LIMITS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")
N_CHAIN = 20  # records in the `chain_db` fixture


def make_record(i: int, **overrides: Any) -> AuditRecord:
    tier = TIERS[i % 3]
    fields: dict[str, Any] = {
        "request_id": f"req-{i}",
        "time": T0 + i * 10.0,
        "key_id": f"k_{i % 5:024x}",
        "tier": tier,
        "model": "sim-llama-3-8b-instruct",
        "route": "chat",
        "status": 200,
        "decision": "allow",
        "action": "allow",
        "scores": {"cyber": round((i % 10) / 10, 2), "benign": 0.9},
        "categories": (),
        "limit": "admitted",
        "prompt_tokens": 10 + i % 7,
        "completion_tokens": 20 + i % 11,
        "watermark_key_id": "wm-1" if i % 4 else None,
        "policy_version": "v1",
        "policy_hash": "ab" * 32,
        "prompt_hash": f"{i:064x}",
    }
    if i % 7 == 0:
        fields |= {"decision": "rate_limited", "status": 429,
                   "limit": f"refused:{LIMITS[i % 3]}", "watermark_key_id": None}
    elif i % 11 == 0:
        fields |= {"decision": "block", "status": 400, "action": "block",
                   "categories": ("cyber",), "watermark_key_id": None}
    elif i % 13 == 0:
        fields |= {"action": "flag", "categories": ("cyber",)}
    fields.update(overrides)
    return AuditRecord(**fields)


def tamper(path: Path, change: Callable[[sqlite3.Connection], object]) -> None:
    """What someone with write access to the file can do: the triggers are no obstacle."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    change(db)
    db.commit()
    db.close()
