"""Every metric a dashboard panel or alert queries exists in a live scrape of the gateway
and of the simulator (which exports vLLM's names), as # TYPE lines."""

from __future__ import annotations

import re

import aiohttp
import orjson

from tests.conftest import ROOT, Server, chat
from tests.helm.dashboard_metrics import metric_names

DASHBOARD = orjson.loads((ROOT / "helm" / "gateway" / "dashboards" / "gateway.json").read_bytes())
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _exported(text: str) -> set[str]:
    names = set()
    for family in re.findall(r"^# TYPE (\S+) (\w+)", text, re.M):
        name, kind = family
        names.add(name)
        if kind == "counter":
            names.add(name + "_total" if not name.endswith("_total") else name)
        if kind == "histogram":
            names.update(name + s for s in ("_bucket", "_count", "_sum"))
    return names


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def test_dashboard_queries_only_scraped_metrics(gateway: Server, sim: Server,
                                                      http: aiohttp.ClientSession) -> None:
    async with http.post(gateway.url + "/v1/chat/completions", json=chat(stream=True)) as resp:
        await resp.read()
    scraped = set()
    for server in (gateway, sim):
        async with http.get(server.url + "/metrics") as resp:
            scraped |= _exported(await resp.text())
    wanted = metric_names(DASHBOARD)
    missing = {m for m in wanted if m not in scraped and _base(m) not in scraped}
    assert wanted and not missing, sorted(missing)
