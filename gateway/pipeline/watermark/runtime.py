"""What the watermark needs at run time, hung off the app under one typed key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.pipeline.watermark.ledger import Ledger


@dataclass(frozen=True, slots=True)
class WatermarkRuntime:
    """The server secret (`load_secret(home, "watermark")`), the ledger (None when no
    tier keeps one), the metrics the filters and the detector count into, and the clock
    that stamps payloads, headers and records (injectable for tests and benchmarks)."""

    secret: bytes
    ledger: Ledger | None = None
    metrics: Metrics | None = None
    clock: Callable[[], float] = time.time


WATERMARK: web.AppKey[WatermarkRuntime] = web.AppKey("watermark")
