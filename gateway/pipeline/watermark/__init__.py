"""Watermark and provenance: mark what leaves, remember it, trace it back.

    payload.py     the signed invisible payload: fields, encoding, extract, verify, strip
    embed.py       PayloadFilter: where marks may go (prose only), streaming-safe
    strip.py       strip_marks_from_messages: the shape stage removes echoed marks
    fingerprint.py normalisation, word shingles, MinHash, LSH bands
    ledger.py      Ledger (async writer, queries) over LedgerStore (SQLite; Postgres later)
    filters.py     the output filter factories (payload, ledger), provenance_header,
                   vllm_xargs for the statistical watermark (gateway.vllm_plugin)
    provenance.py  the x-gateway-provenance header: sign and verify
    detect.py      detect(text, secret, ledger): payloads + ledger matches + decision
    cli.py         `gateway watermark detect|verify`
    http.py        POST /admin/v1/watermark/detect
    runtime.py     WatermarkRuntime and its app key WATERMARK

Everything per request is a pure function of the request and the runtime; the runtime
(secret, ledger, metrics) hangs off the app under WATERMARK and the ledger is opened and
closed with the app.
"""

from __future__ import annotations

from gateway.pipeline.watermark.detect import detect
from gateway.pipeline.watermark.filters import (
    LedgerFilter,
    ledger_filter,
    payload_filter,
    provenance_header,
    structured_output,
    subject_key_id,
    vllm_xargs,
    watermark_filters,
)
from gateway.pipeline.watermark.ledger import Ledger, LedgerStore, Match, Record, SqliteStore
from gateway.pipeline.watermark.payload import (
    Payload,
    extract_payloads,
    key_id,
    strip_marks,
    verify,
)
from gateway.pipeline.watermark.provenance import HEADER, sign_provenance, verify_provenance
from gateway.pipeline.watermark.runtime import WATERMARK, WatermarkRuntime
from gateway.pipeline.watermark.strip import strip_marks_from_messages

__all__ = [
    "HEADER",
    "WATERMARK",
    "Ledger",
    "LedgerFilter",
    "LedgerStore",
    "Match",
    "Payload",
    "Record",
    "SqliteStore",
    "WatermarkRuntime",
    "detect",
    "extract_payloads",
    "key_id",
    "ledger_filter",
    "payload_filter",
    "provenance_header",
    "sign_provenance",
    "strip_marks",
    "strip_marks_from_messages",
    "structured_output",
    "subject_key_id",
    "verify",
    "verify_provenance",
    "vllm_xargs",
    "watermark_filters",
]
