"""POST /admin/v1/watermark/detect over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics
from gateway.middleware import render_errors
from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.http import detect_handler
from gateway.pipeline.watermark.ledger import Ledger, Record
from gateway.pipeline.watermark.runtime import WATERMARK, WatermarkRuntime
from tests.pipeline.watermark.helpers import KID, MARK, PROSE, REQUEST_ID, SECRET, run_filter

PATH = "/admin/v1/watermark/detect"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, CollectorRegistry]]:
    registry = CollectorRegistry()
    ledger = Ledger.sqlite(tmp_path / "ledger.sqlite3")
    await ledger.start()
    ledger.write([Record(REQUEST_ID, KID, "public", "m", 1.75e9, "v1",
                         tuple(fp.word_hashes(PROSE)))])
    app = web.Application(middlewares=[render_errors])  # renders the 400s as in the app
    app[WATERMARK] = WatermarkRuntime(SECRET, ledger, Metrics(registry))
    app.router.add_post(PATH, detect_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}{PATH}", registry
    await runner.cleanup()
    await ledger.close()


async def test_detect_answers_json_and_counts(server: tuple[str, CollectorRegistry]) -> None:
    url, registry = server
    marked, _ = run_filter(PROSE)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"text": marked[:700]}) as resp:
            assert resp.status == 200
            report = await resp.json()
        async with http.post(url, json={"text": PROSE[200:900], "limit": 2}) as resp:
            assert (await resp.json())["result"] == "ledger"
    assert report["result"] == "payload" and report["attribution"]["key_id"] == KID
    assert registry.get_sample_value("gateway_watermark_detections_total",
                                     {"result": "payload"}) == 1


@pytest.mark.parametrize("body", [b"not json", b'{"text": ""}', b'{"text": 5}', b"[]",
                                  b'{"text": "x", "limit": 0}'])
async def test_bad_bodies_are_refused(server: tuple[str, CollectorRegistry],
                                      body: bytes) -> None:
    url, _ = server
    async with aiohttp.ClientSession() as http, http.post(
            url, data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_a_body_that_is_not_json_by_its_type_is_refused(
        server: tuple[str, CollectorRegistry]) -> None:
    url, _ = server
    async with aiohttp.ClientSession() as http, http.post(
            url, data=b'{"text": "hello"}', headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_a_copied_payload_is_reported_unconfirmed_over_http(
        server: tuple[str, CollectorRegistry]) -> None:
    url, registry = server
    made_up = "Words the key never got " + MARK + "with a mark copied from its answer."
    async with aiohttp.ClientSession() as http, http.post(url, json={"text": made_up}) as resp:
        assert resp.status == 200
        report = await resp.json()
    assert report["result"] == "payload_unconfirmed" and report["attribution"] is None
    assert report["payloads"][0]["key_id"] == KID
    assert report["payloads"][0]["corroborated"] is False
    assert "copied" in report["reason"]
    assert registry.get_sample_value("gateway_watermark_detections_total",
                                     {"result": "payload_unconfirmed"}) == 1
