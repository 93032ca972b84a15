"""The filter factories: per tier, per request shape, and the ledger record they leave."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.context import Principal, RequestContext, Route
from gateway.metrics import Metrics
from gateway.pipeline.output import FilterChain, OutputFilter
from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.filters import (
    LedgerFilter,
    ledger_filter,
    payload_filter,
    provenance_header,
    vllm_xargs,
    watermark_filters,
)
from gateway.pipeline.watermark.ledger import Ledger
from gateway.pipeline.watermark.payload import extract_payloads, key_id, strip_marks, verify
from gateway.pipeline.watermark.provenance import verify_provenance
from gateway.pipeline.watermark.runtime import WatermarkRuntime
from gateway.policy.spec import TierSpec, WatermarkSpec
from tests.pipeline.watermark.helpers import PROSE, REQUEST_ID, SECRET, split_at


def ctx(route: Route = "chat", watermark: WatermarkSpec | None = None,
        **body: Any) -> RequestContext:
    spec = TierSpec(name="public", models=("*",), watermark=watermark or WatermarkSpec())
    return RequestContext(request_id=REQUEST_ID, route=route, body={"model": "m", **body},
                          model="m", principal=Principal(sub="alice", tier="public"),
                          tier="public", tier_spec=spec)


NOW = 1_700_000_000.0


def runtime(ledger: Ledger | None = None, registry: CollectorRegistry | None = None
            ) -> WatermarkRuntime:
    metrics = Metrics(registry) if registry is not None else None
    return WatermarkRuntime(SECRET, ledger, metrics, clock=lambda: NOW)


@pytest.mark.parametrize(("request_ctx", "applies"), [
    (ctx(), True),
    (ctx("completions", prompt="Once upon a time"), True),
    (ctx(response_format={"type": "text"}), True),
    (ctx(watermark=WatermarkSpec(payload=False)), False),
    (ctx(response_format={"type": "json_object"}), False),
    (ctx(response_format={"type": "json_schema", "json_schema": {}}), False),
    (ctx(guided_json={"type": "object"}), False),
    (ctx(structured_outputs={"regex": "a+"}), False),
    (ctx("embeddings"), False),
])
def test_payload_filter_applies_to_prose_only(request_ctx: RequestContext,
                                              applies: bool) -> None:
    assert (payload_filter(request_ctx, runtime(), "v1") is not None) is applies


def test_marks_carry_the_subjects_key_and_are_counted() -> None:
    registry = CollectorRegistry()
    f = payload_filter(ctx(), runtime(registry=registry), "a1b2c3d4e5f6")
    assert f is not None
    out = FilterChain((f,)).apply(PROSE)
    (p,) = extract_payloads(out)
    assert p.key_id == key_id(SECRET, "alice") and verify(p, SECRET)
    assert p.policy_ref == "a1b2c3" and p.issued_at == NOW
    assert registry.get_sample_value("gateway_watermarked_responses_total",
                                     {"tier": "public", "mode": "payload"}) == 1


def test_ledger_filter_needs_a_ledger_and_the_tier(tmp_path: Path) -> None:
    led = Ledger.sqlite(tmp_path / "l.sqlite3")
    assert ledger_filter(ctx(), runtime(), "v1") is None
    assert ledger_filter(ctx(watermark=WatermarkSpec(ledger=False)), runtime(led), "v1") is None
    assert ledger_filter(ctx("embeddings"), runtime(led), "v1") is None
    f = ledger_filter(ctx(), runtime(led), "v1")
    assert isinstance(f, LedgerFilter)
    assert f.feed("unchanged ") == "unchanged "


async def test_streamed_and_whole_responses_are_marked_and_recorded_alike(
        tmp_path: Path) -> None:
    led = Ledger.sqlite(tmp_path / "l.sqlite3")
    await led.start()
    rt = runtime(led)
    factories = watermark_filters(rt, "v1")
    request = ctx(watermark=WatermarkSpec(store_text=True))

    def chain() -> FilterChain:
        filters: list[OutputFilter] = []
        for make in factories:
            made = make(request)
            if made is not None:
                filters.append(made)
        return FilterChain(tuple(filters))

    whole = chain().apply(PROSE)
    streaming = chain()
    pieces = [streaming.feed(p) for p in split_at(PROSE, range(3, len(PROSE), 7))]
    streamed = "".join(pieces) + streaming.finish()
    assert streamed == whole and strip_marks(whole) == PROSE
    await led.flush()
    matches = led.match(PROSE[100:500])
    assert [m.record.request_id for m in matches[:2]] == [REQUEST_ID, REQUEST_ID]
    assert matches[0].record.key_id == key_id(SECRET, "alice")
    assert matches[0].record.text == whole  # as delivered, marks included
    assert matches[0].record.created == NOW
    await led.close()


async def test_a_response_that_never_finishes_is_still_recorded(tmp_path: Path) -> None:
    led = Ledger.sqlite(tmp_path / "l.sqlite3")
    await led.start()
    f = ledger_filter(ctx(), runtime(led), "v1")
    assert f is not None
    f.feed(PROSE[:400])
    del f
    gc.collect()
    await led.flush()
    assert led.match(PROSE[:400])[0].record.request_id == REQUEST_ID
    await led.close()


def test_header_and_vllm_arguments_name_the_same_key() -> None:
    request = ctx()
    kid = key_id(SECRET, "alice")
    assert vllm_xargs(request, runtime()) == {"gateway_key_id": kid}
    value = provenance_header(request, runtime(), ["text"])
    assert value is not None
    result = verify_provenance(value, SECRET, ["text"])
    assert result.valid and result.fields["kid"] == kid
    odd = ctx()
    odd.request_id = "bad;id"
    assert provenance_header(odd, runtime()) is None


async def test_a_large_answer_is_fingerprinted_no_further_than_a_record_keeps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole non-streaming answer is one delta: it was normalised and hashed to its end
    (8 MB: over a second on the event loop) though a record keeps ~25,000 words. The
    record is the same as from small deltas."""
    read: list[int] = []
    feed = fp.Tokenizer.feed

    def counted(self: fp.Tokenizer, delta: str) -> list[int]:
        read.append(len(delta))
        return feed(self, delta)

    monkeypatch.setattr(fp.Tokenizer, "feed", counted)
    big = PROSE * (4_000_000 // len(PROSE))
    led = Ledger.sqlite(tmp_path / "l.sqlite3")
    await led.start()
    whole, pieces = (ledger_filter(ctx(), runtime(led), "v1") for _ in range(2))
    assert whole is not None and pieces is not None
    whole.feed(big)
    assert sum(read) < 1_000_000  # not the 4 MB
    for part in split_at(big[:400_000], range(997, 400_000, 997)):
        pieces.feed(part)
    kept = fp.MAX_CHUNKS * fp.CHUNK + fp.SHINGLE  # the words a record keeps
    assert min(len(whole._state.hashes), len(pieces._state.hashes)) >= kept
    assert whole._state.hashes[:kept] == pieces._state.hashes[:kept]
    await led.close()
