"""SIGTERM with 100 open streams against a real `gateway serve`: the short ones finish, the
long ones are cut only once the drain time-out has passed, the process exits 0, and the
audit log holds exactly one record for every request that got a response."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp

from gateway.audit.verify import verify_chain
from tests.conftest import Process, chat

STREAMS, DRAIN_S = 100, 3.0


async def _open(http: aiohttp.ClientSession, url: str, i: int) -> aiohttp.ClientResponse:
    # Odd streams outlive the drain time-out: 2 tokens a second, and the simulator's answers
    # run to a few dozen tokens.
    speed, tokens = ("2", 400) if i % 2 else ("20", 16)
    resp = await http.post(url + "/v1/chat/completions", headers={"x-request-id": f"s-{i}"},
                           json=chat(f"[[sim:tps={speed}]] go", stream=True,
                                     max_tokens=tokens))
    assert resp.status == 200
    await resp.content.readuntil(b"\n\n")  # headers and the first event: it is open
    return resp


async def _finish(resp: aiohttp.ClientResponse) -> tuple[bool, float]:
    """(ended with [DONE], when the stream ended)."""
    try:
        raw = await resp.read()
    except aiohttp.ClientPayloadError:
        raw = b""  # cut mid-chunk
    finally:
        resp.close()
    return raw.endswith(b"data: [DONE]\n\n"), time.monotonic()


def _audited(db: Path) -> Counter[str]:
    conn = sqlite3.connect(db)
    try:
        return Counter(row[0] for row in conn.execute("SELECT request_id FROM audit"))
    finally:
        conn.close()


async def test_sigterm_with_100_streams_loses_no_audit_record(
        gateway_process: Callable[..., Process], tmp_path: Path, token: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"drain_timeout_s: {DRAIN_S}\nlog_level: WARNING\n")
    gw = gateway_process("--config", str(config))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
        streams = await asyncio.gather(*(_open(http, gw.url, i) for i in range(STREAMS)))
        gw.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ends = await asyncio.wait_for(asyncio.gather(*(_finish(r) for r in streams)), 30)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    short = [ends[i] for i in range(0, STREAMS, 2)]
    long = [ends[i] for i in range(1, STREAMS, 2)]
    assert all(done for done, _ in short), "a short stream was cut during the drain"
    assert not any(done for done, _ in long), "a long stream outlived the drain time-out"
    assert min(at for _, at in long) - signalled >= DRAIN_S - 0.1, "cut before the time-out"
    db = tmp_path / "home" / "audit.sqlite3"
    counts = _audited(db)
    assert {f"s-{i}": 1 for i in range(STREAMS)} == {k: v for k, v in counts.items()
                                                     if k.startswith("s-")}
    result = verify_chain(db)
    assert result.ok and result.checked == sum(counts.values())
