"""The real Prometheus server scrapes the gateway and answers PromQL about it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Server, chat, free_port

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    if PROMETHEUS is None:
        if os.environ.get("GATEWAY_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("prometheus is required here (apt-get install prometheus)")
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus)")
    started: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: gateway\n    static_configs: [{{targets: ['{target}']}}]\n")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'db'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


async def _query(http: aiohttp.ClientSession, url: str, promql: str) -> list[Any]:
    async with http.get(url + "/api/v1/query", params={"query": promql}) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


async def test_promql_over_a_live_scrape(gateway: Server, prometheus: Any,
                                         http: aiohttp.ClientSession) -> None:
    prom = prometheus(gateway.url.removeprefix("http://"))

    async def scrapes() -> float:
        try:
            up = await _query(http, prom, "count_over_time(up{job='gateway'}[1m])")
        except aiohttp.ClientError:
            return 0
        return float(up[0]["value"][1]) if up else 0

    async def wait_scrapes(n: float) -> None:
        for _ in range(200):
            if await scrapes() >= n:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("prometheus did not scrape the gateway")

    async def traffic(count: int) -> None:
        for i in range(count):
            async with http.post(gateway.url + "/v1/chat/completions",
                                 json=chat(f"hi {i}", stream=i % 2 == 0, max_tokens=8)) as resp:
                assert resp.status == 200
                await resp.read()

    # One request first, then a baseline sample of its series, so rate() sees the rest.
    await traffic(1)
    await wait_scrapes(2)
    before = await scrapes()
    await traffic(11)
    await wait_scrapes(before + 2)

    by_tier = await _query(http, prom,
                           "sum by (tier) (rate(gateway_requests_total"
                           "{route='/v1/chat/completions'}[1m]))")
    assert {r["metric"]["tier"] for r in by_tier} == {"trusted"}
    assert float(by_tier[0]["value"][1]) > 0
    ttft = await _query(http, prom, "histogram_quantile(0.5, sum by (le) "
                                    "(gateway_time_to_first_token_seconds_bucket))")
    assert ttft and 0 < float(ttft[0]["value"][1]) < 1
    overhead = await _query(http, prom, "sum(gateway_overhead_seconds_count)")
    assert float(overhead[0]["value"][1]) == 12
