"""Hot reload: good edits apply without a restart, bad ones keep the last good policy."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.context import PIPELINE, RELOADER
from tests.conftest import ROOT, Server, StartGateway, chat, wait_until


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", directory)
    return directory


async def _reload_failures(http: aiohttp.ClientSession, gateway: Server) -> float:
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_policy_reload_failures":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


@pytest.mark.parametrize(
    "bad_edit",
    ["garbage: [unclosed\n", "", "tiers:\n  public:\n    models: [\"*-8b-*\"]\n    limits: {requ"],
    ids=["garbage", "empty", "half-written"],
)
async def test_bad_edit_keeps_last_good_with_zero_failed_requests(
        start_gateway: StartGateway, sim: Server, policies: Path,
        http: aiohttp.ClientSession, bad_edit: str) -> None:
    gateway = await start_gateway(sim.url, policies=str(policies), policy_poll_s=0.05)
    reloader = gateway.app[RELOADER]
    good_version = reloader.status.version
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            async with http.post(gateway.url + "/v1/chat/completions",
                                 json=chat(max_tokens=2)) as resp:
                statuses.append(resp.status)
                await resp.read()

    workers = [asyncio.create_task(load()) for _ in range(4)]
    (policies / "tiers.yaml").write_text(bad_edit)
    await wait_until(lambda: reloader.status.last_error is not None)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*workers)
    assert statuses and set(statuses) == {200}
    assert gateway.app[PIPELINE].current.version == good_version
    assert await _reload_failures(http, gateway) >= 1
    async with http.get(gateway.url + "/admin/v1/policy") as resp:
        status = (await resp.json())["active"]
    assert status["version"] == good_version
    assert "tiers.yaml" in status["last_error"]


async def test_good_edit_applies_without_restart(start_gateway: StartGateway, sim: Server,
                                                 policies: Path,
                                                 http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(sim.url, policies=str(policies), policy_poll_s=0.05)
    old = gateway.app[PIPELINE].current.version
    text = (policies / "tiers.yaml").read_text()
    (policies / "tiers.yaml").write_text(text.replace("max_tokens: 32768", "max_tokens: 7"))
    await wait_until(lambda: gateway.app[PIPELINE].current.version != old)
    async with http.post(gateway.url + "/v1/chat/completions",
                         json=chat(max_tokens=100)) as resp:
        body = await resp.json()
    assert body["usage"]["completion_tokens"] <= 7
    async with http.get(gateway.url + "/admin/v1/policy") as resp:
        assert (await resp.json())["active"]["last_error"] is None


async def test_reload_endpoint(start_gateway: StartGateway, sim: Server, policies: Path,
                               http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(sim.url, policies=str(policies), policy_poll_s=3600)
    (policies / "tiers.yaml").write_text("tiers: {}\n")
    async with http.post(gateway.url + "/admin/v1/policy/reload") as resp:
        assert resp.status == 422
        assert (await resp.json())["reloaded"] is False
