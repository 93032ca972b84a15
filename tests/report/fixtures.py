"""A real audit database, written through AuditLog, with a day of varied traffic."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.audit import AuditLog, AuditSettings
from tests.audit.records import make_record

DAY = 86400.0


async def write_day(home: Path, until: float, n: int = 400) -> Path:
    """n records spread over the 24 h before `until`, through the real writer."""
    audit = AuditLog(AuditSettings(), home)
    await audit.start()
    step = DAY / n
    records = []
    for i in range(1, n + 1):
        record = make_record(i, time=until - DAY + (i - 0.5) * step)
        if i % 17 == 0:
            record = make_record(i, time=record.time, route="embeddings", watermark_key_id=None)
        records.append(record)
    assert all(await asyncio.gather(*(audit.submit(r) for r in records)))
    await audit.close()
    return audit.path
