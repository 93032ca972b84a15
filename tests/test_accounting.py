"""Every answered request leaves one audit record, written before the response ends."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from gateway.audit import verify_chain
from tests.conftest import Server, chat


async def test_records_for_json_stream_and_refusal(gateway: Server, home: Path,
                                                   http: aiohttp.ClientSession) -> None:
    ids = []
    for body in (chat(max_tokens=3), chat(stream=True, max_tokens=3),
                 {**chat(), "n": 99}):
        async with http.post(gateway.url + "/v1/chat/completions", json=body) as resp:
            await resp.read()
            ids.append(resp.headers["x-request-id"])
    async with http.get(gateway.url + "/admin/v1/audit", params={"limit": "10"}) as resp:
        records = (await resp.json())["records"]
    by_id = {r["request_id"]: r for r in records}
    assert set(ids) <= set(by_id)
    assert [by_id[i]["status"] for i in ids] == [200, 200, 400]
    assert by_id[ids[0]]["completion_tokens"] == 3
    assert by_id[ids[1]]["completion_tokens"] == 3
    assert by_id[ids[2]]["decision"] == "invalid"
    raw = orjson.dumps(records)
    assert b"Hello there" not in raw, "prompts are not stored by default"
    assert verify_chain(home / "audit.sqlite3").ok
