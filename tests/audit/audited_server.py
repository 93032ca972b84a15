"""A tiny server that answers each request only after its audit record is committed, as
the gateway does at response end. Run by test_crash.py, which SIGKILLs it mid-traffic.

    python -m tests.audit.audited_server HOME SLOW_MS
    (prints the port, then serves GET /r?i=N; every batch write takes SLOW_MS longer, a
    slow disk, so records that were merely queued would be caught out by the kill)
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway.audit import AUDIT, AuditLog, AuditSettings
from gateway.audit.record import AuditRecord, ChainedRecord
from gateway.audit.store import AuditStore, SqliteStore
from tests.audit.records import make_record


class SlowStore(SqliteStore):
    slow_s = 0.0

    def append(self, records: Sequence[AuditRecord]) -> list[ChainedRecord]:
        time.sleep(self.slow_s)
        return super().append(records)


async def handle(request: web.Request) -> web.Response:
    record = make_record(int(request.query["i"]), time=time.time())
    committed = await request.app[AUDIT].submit(record)
    return web.json_response({"committed": committed})


async def main(home: Path, slow_s: float) -> None:
    path = AuditSettings().resolve(home)

    def opener(readonly: bool) -> AuditStore:
        store = SlowStore(path, readonly=readonly)
        store.slow_s = slow_s
        return store

    audit = AuditLog(AuditSettings(), home, opener=opener)
    await audit.start()
    app = web.Application()
    app[AUDIT] = audit
    app.router.add_get("/r", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2]) / 1000))
