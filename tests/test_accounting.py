"""Every answered request leaves one audit record, written before the response ends."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.audit import AUDIT, AUDIT_KEYS, verify_chain
from gateway.audit.record import AuditRecord
from tests.conftest import MintToken, Server, StartGateway, chat, requests_total, wait_until


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


async def test_requests_with_no_audit_record_still_get_their_log_line(
        gateway: Server, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
        mint: MintToken) -> None:
    """Admin calls, refusals before the body is read and models left no trace at all."""
    admin = {"Authorization": f"Bearer {mint(sub='ops-admin')}"}
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        async with http.post(gateway.url + "/admin/v1/policy/reload", headers=admin) as resp:
            assert resp.status == 200
            reload_id = resp.headers["x-request-id"]
        async with aiohttp.ClientSession() as anonymous, anonymous.post(
                gateway.url + "/v1/chat/completions", json=chat()) as resp:
            assert resp.status == 401
            refused_id = resp.headers["x-request-id"]
        async with http.get(gateway.url + "/healthz") as resp:  # probes: no line each
            assert resp.status == 200
    lines = {r.request_id: r for r in caplog.records  # type: ignore[attr-defined]
             if r.getMessage() == "request"}
    keys = gateway.app[AUDIT_KEYS]
    reload = lines[reload_id]
    assert (reload.method, reload.route, reload.status) == (  # type: ignore[attr-defined]
        "POST", "/admin/v1/policy/reload", 200)
    assert reload.key_id == keys.key_id("ops-admin")  # type: ignore[attr-defined]
    assert (lines[refused_id].status, lines[refused_id].key_id) == (  # type: ignore[attr-defined]
        401, "-")
    assert len(lines) == 2


async def test_a_client_that_leaves_while_its_record_is_committed_still_gets_its_line(
        gateway: Server, home: Path, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    """The answer waits for its record's commit; a client gone meanwhile cancels that
    wait. The record is written all the same, and the request keeps its log line (it had
    none: the middleware's second call found the record already made)."""
    lock = sqlite3.connect(home / "audit.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # holds the commit, within the store's 5 s patience
    try:
        with caplog.at_level(logging.INFO, logger="gateway.request"):
            task = asyncio.create_task(http.post(
                gateway.url + "/v1/chat/completions", json=chat(max_tokens=2),
                headers={"x-request-id": "left-while-audited"}))
            await wait_until(lambda: gateway.app[AUDIT].pending == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_until(lambda: [
                r for r in caplog.records
                if getattr(r, "request_id", None) == "left-while-audited"] != [])
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    await wait_until(lambda: gateway.app[AUDIT].pending == 0)
    async with http.get(gateway.url + "/admin/v1/audit",
                        params={"request_id": "left-while-audited"}) as resp:
        records = (await resp.json())["records"]
    assert [r["status"] for r in records] == [200]  # the answer was whole when it left
    line, = [r for r in caplog.records if getattr(r, "request_id", None) == "left-while-audited"]
    assert line.status == 200  # type: ignore[attr-defined]


async def test_the_answer_is_sent_before_its_log_line(
        gateway: Server, token: str, caplog: pytest.LogCaptureFixture) -> None:
    """The log line (and the metrics, after it) come once the answer has gone: a log
    handler that holds the loop (a full pipe to a slow log collector) holds it with the
    answer already on its way. The client reads it from another thread while the handler
    waits; had the line been written first, the handler would wait for an answer not yet
    sent."""
    answered = threading.Event()
    waits: list[bool] = []

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "request":
                waits.append(answered.wait(5))

    def call() -> bytes:
        request = urllib.request.Request(
            gateway.url + "/v1/chat/completions", data=orjson.dumps(chat(max_tokens=2)),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = resp.read()
        answered.set()
        return body

    handler = Waiting()
    logger = logging.getLogger("gateway.request")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="gateway.request"):
            body = await asyncio.to_thread(call)
    finally:
        logger.removeHandler(handler)
    assert orjson.loads(body)["choices"][0]["message"]["content"]
    assert waits == [True]


@pytest.mark.parametrize("acknowledge", ["committed", "queued"])
async def test_queued_acknowledge_answers_before_the_commit(
        start_gateway: StartGateway, sim: Server, home: Path, http: aiohttp.ClientSession,
        acknowledge: str) -> None:
    """A writer lock holds every commit back. `committed` (the default) holds the answer
    until its record is in the store; `queued` answers at once, JSON and stream alike, and
    the records are committed once the lock goes."""
    gateway = await start_gateway(sim.url, audit={"acknowledge": acknowledge})
    lock = sqlite3.connect(home / "audit.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # released within the store's 5 s patience

    async def answer(body: dict[str, object]) -> tuple[int, bytes, str]:
        async with http.post(gateway.url + "/v1/chat/completions", json=body) as resp:
            return resp.status, await resp.read(), resp.headers["x-request-id"]

    try:
        tasks = [asyncio.create_task(answer(chat(max_tokens=2))),
                 asyncio.create_task(answer(chat(max_tokens=2, stream=True)))]
        await wait_until(lambda: gateway.app[AUDIT].pending == 2)
        done, _ = await asyncio.wait(tasks, timeout=0.5)
        assert len(done) == (2 if acknowledge == "queued" else 0)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    answers = [await task for task in tasks]
    assert [status for status, _, _ in answers] == [200, 200]
    assert orjson.loads(answers[0][1])["choices"]
    assert answers[1][1].rstrip().endswith(b"data: [DONE]")
    await wait_until(lambda: gateway.app[AUDIT].pending == 0)
    async with http.get(gateway.url + "/admin/v1/audit", params={"limit": "10"}) as resp:
        stored = {r["request_id"]: r["status"] for r in (await resp.json())["records"]}
    assert [stored.get(rid) for _, _, rid in answers] == [200, 200]
    assert verify_chain(home / "audit.sqlite3").ok


async def test_a_request_alone_in_flight_has_its_record_committed_on_the_loop(
        gateway: Server, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone, nothing else waits on the event loop, so the record may be committed there
    (AuditLog's inline commit); while another request is in flight it goes to the writer
    thread, off the loop."""
    audit, asked = gateway.app[AUDIT], []
    submit = audit.submit

    async def spy(record: AuditRecord, **kw: bool) -> bool:
        asked.append(kw.get("inline", False))
        return await submit(record, **kw)

    monkeypatch.setattr(audit, "submit", spy)
    url = gateway.url + "/v1/chat/completions"
    async with http.post(url, json=chat(max_tokens=2)) as resp:
        assert resp.status == 200
    async with http.post(url, json=chat("[[sim:tps=20]] held", stream=True,
                                        max_tokens=4)) as held:
        await held.content.readline()  # the stream is in flight
        async with http.post(url, json=chat(max_tokens=2)) as resp:
            assert resp.status == 200
        assert (await held.read()).rstrip().endswith(b"data: [DONE]")
    assert asked == [True, False, True]


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
async def test_an_answer_whose_record_is_lost_is_withheld_when_fail_closed(
        start_gateway: StartGateway, sim: Server, home: Path, http: aiohttp.ClientSession,
        on_error: str) -> None:
    """A writer lock holds the first record uncommitted; with a queue of one and drop, the
    next records are lost. fail_open serves those answers anyway; fail_closed withholds
    them: a 503, and a stream ends with an error event instead of [DONE]."""
    gateway = await start_gateway(sim.url, audit={"queue_size": 1, "overflow": "drop",
                                                  "on_error": on_error})
    lock = sqlite3.connect(home / "audit.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        first = asyncio.create_task(http.post(gateway.url + "/v1/chat/completions",
                                              json=chat(max_tokens=2)))
        await wait_until(lambda: gateway.app[AUDIT].pending == 1)
        async with http.post(gateway.url + "/v1/chat/completions",
                             json=chat(max_tokens=2)) as resp:
            plain = resp.status, await resp.json()
        async with http.post(gateway.url + "/v1/chat/completions",
                             json=chat(max_tokens=2, stream=True)) as resp:
            streamed = resp.status, (await resp.read()).rstrip().rsplit(b"\n", 1)[-1]
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    async with await first as resp:
        assert resp.status == 200  # its record committed once the lock went
    if on_error == "fail_open":
        assert plain[0] == 200 and plain[1]["choices"]
        assert streamed == (200, b"data: [DONE]")
        return
    assert plain[0] == 503 and plain[1]["error"]["code"] == "audit_unavailable"
    assert streamed[0] == 200
    assert orjson.loads(streamed[1].removeprefix(b"data: "))["error"]["code"] == \
        "audit_unavailable"
    assert await requests_total(gateway.url, "status", route="/v1/chat/completions") == {
        "200": 1, "503": 2}


async def test_admin_calls_with_a_valid_token_are_audited(
        gateway: Server, home: Path, http: aiohttp.ClientSession, mint: MintToken) -> None:
    """Who reloaded the policy or read the audit log, and who tried without the admin
    scope, is in the tamper-evident trail; a call without a valid token is not (it gets a
    log line: nobody can fill the append-only log without a token)."""
    ids: dict[str, str] = {}
    async with http.post(gateway.url + "/admin/v1/policy/reload") as resp:  # admin token
        assert resp.status == 200
        ids["reload"] = resp.headers["x-request-id"]
    user = {"Authorization": f"Bearer {mint(sub='someone', scopes=())}"}
    async with aiohttp.ClientSession(headers=user) as plain, \
            plain.get(gateway.url + "/admin/v1/audit") as resp:
        assert resp.status == 403
        ids["denied"] = resp.headers["x-request-id"]
    async with aiohttp.ClientSession() as anonymous, \
            anonymous.get(gateway.url + "/admin/v1/audit") as resp:
        assert resp.status == 401
        ids["anonymous"] = resp.headers["x-request-id"]
    async with http.get(gateway.url + "/admin/v1/audit") as resp:
        records = {r["request_id"]: r for r in (await resp.json())["records"]}
    reload, denied = records[ids["reload"]], records[ids["denied"]]
    assert (reload["route"], reload["status"], reload["decision"]) == (
        "/admin/v1/policy/reload", 200, "admin")
    assert (denied["route"], denied["status"], denied["decision"]) == (
        "/admin/v1/audit", 403, "forbidden")
    assert reload["key_id"] != denied["key_id"]
    assert ids["anonymous"] not in records
    assert verify_chain(home / "audit.sqlite3").ok
