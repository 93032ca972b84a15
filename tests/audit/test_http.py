"""GET /admin/v1/audit on a real socket, behind a stub authenticator (a plain class)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import MultiDict

from gateway.audit import AUDIT, AuditLog, AuditSettings
from gateway.audit.http import add_audit_routes, parse_query
from gateway.audit.log import encode_cursor
from gateway.context import PIPELINE, Principal
from gateway.errors import BadRequest, Unauthorized
from gateway.middleware import render_errors
from gateway.pipeline import Pipeline, PipelineRef
from tests.audit.records import T0, make_record

ADMIN = {"Authorization": "Bearer admin-token"}
USER = {"Authorization": "Bearer user-token"}


class StubAuth:
    async def authenticate(self, authorization: list[str], query_has_token: bool) -> Principal:
        if authorization == ["Bearer admin-token"]:
            return Principal(sub="root", tier="internal", scopes=frozenset({"admin"}))
        if authorization == ["Bearer user-token"]:
            return Principal(sub="alice", tier="public")
        raise Unauthorized("missing or invalid token")


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    audit = AuditLog(AuditSettings(), tmp_path)
    await audit.start()
    await asyncio.gather(*(audit.submit(make_record(i)) for i in range(1, 61)))
    app = web.Application(middlewares=[render_errors])
    app[PIPELINE] = PipelineRef(Pipeline(auth=StubAuth(), stages=()))
    app[AUDIT] = audit
    add_audit_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/admin/v1/audit"
    await runner.cleanup()
    await audit.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, params: Any = None,
              headers: Mapping[str, str] = ADMIN) -> tuple[int, Any]:
    async with http.get(url, headers=headers, params=params or {}) as resp:
        return resp.status, await resp.json()


async def test_refuses_callers_without_the_admin_scope(http: aiohttp.ClientSession,
                                                       url: str) -> None:
    status, body = await get(http, url, headers={})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = await get(http, url, headers=USER)
    assert status == 403 and body["error"]["code"] == "admin_only"


async def test_pages_through_filtered_records(http: aiohttp.ClientSession, url: str) -> None:
    seen: list[str] = []
    cursor: dict[str, str] = {}
    for _ in range(10):
        status, body = await get(http, url, {"tier": "research", "limit": "7", **cursor})
        assert status == 200
        seen += [r["request_id"] for r in body["records"]]
        if body["next_cursor"] is None:
            break
        cursor = {"cursor": body["next_cursor"]}
    assert seen == [f"req-{i}" for i in range(60, 0, -1) if i % 3 == 1]
    status, body = await get(http, url, {"decision": "rate_limited", "since": str(T0 + 100),
                                         "until": str(T0 + 400)})
    assert [r["request_id"] for r in body["records"]] == ["req-35", "req-28", "req-21",
                                                          "req-14"]
    record = body["records"][0]
    assert {"seq", "hash", "prev_hash", "scores", "limit", "key_id"} <= set(record)
    assert record["limit"].startswith("refused:") and record["prompt"] is None
    key_id = make_record(2).key_id
    status, body = await get(http, url, {"key_id": key_id, "limit": "1000"})
    assert {r["key_id"] for r in body["records"]} == {key_id} and len(body["records"]) == 12
    status, body = await get(http, url, {"request_id": "req-7"})  # watermark detect's join
    assert [r["request_id"] for r in body["records"]] == ["req-7"]


@pytest.mark.parametrize(("params", "param"), [
    ({"limit": "0"}, "limit"), ({"limit": "abc"}, "limit"), ({"since": "yesterday"}, "since"),
    ({"cursor": "bogus"}, "cursor"), ({"tiers": "public"}, "tiers"),
    ({"cursor": encode_cursor(10**25)}, "cursor"),  # past SQLite's integers: was a 500
    ({"since": "1h", "until": "2h"}, "since"),  # an empty period, as `gateway report` says
    ([("limit", "5"), ("limit", "500")], "limit"),  # which one counts would be a guess
])
async def test_bad_parameters_are_named(http: aiohttp.ClientSession, url: str,
                                        params: Any, param: str) -> None:
    status, body = await get(http, url, params)
    assert status == 400 and body["error"]["param"] == param


def test_parse_query_reads_relative_and_iso_times() -> None:
    flt, limit, cursor = parse_query(MultiDict(since="3h", until="2023-11-14T22:13:20Z"),
                                     now=T0 + 7200)
    assert (flt.since, flt.until, limit, cursor) == (T0 - 3600, T0, 100, None)
    with pytest.raises(BadRequest):
        parse_query(MultiDict(until="nan"), now=T0)
