"""The ledger on a real PostgreSQL server: retention by partition, shared by replicas,
the detect CLI and the gateway end to end (the shared behaviour runs in test_ledger.py
for both stores)."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import aiohttp
import orjson
import psycopg
import pytest

from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.ledger import DAY_S, Ledger, Record
from gateway.pipeline.watermark.ledger_postgres import PostgresStore
from tests.conftest import MintToken, Server, StartGateway, chat
from tests.pipeline.watermark.helpers import KID, PROSE, REQUEST_ID, SECRET
from tests.pipeline.watermark.test_cli import run
from tests.pipeline.watermark.test_ledger import NOW, TEXTS, record


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def _partitions(url: str) -> int:
    return _count(url, "SELECT count(*) FROM pg_inherits i JOIN pg_class p "
                  "ON p.oid = i.inhparent WHERE p.relname = 'gateway_ledger_bands'")


def test_retention_drops_old_days_whole(postgres_url: str) -> None:
    led = Ledger.at(postgres_url)
    led.open()
    led.write([record(1, TEXTS[1], created=NOW - 40 * DAY_S),
               record(2, TEXTS[2], created=NOW - 31 * DAY_S),
               record(3, TEXTS[3], created=NOW - 2 * DAY_S)])
    assert _partitions(postgres_url) == 3
    assert led.purge(older_than_days=30, now=NOW) == 2
    assert led.store.count() == 1 and _partitions(postgres_url) == 1
    assert led.match(TEXTS[1]) == [] and led.match(TEXTS[2]) == []
    assert led.match(TEXTS[3])[0].record.key_id == f"{3:016x}"
    sigs = _count(postgres_url, "SELECT count(*) FROM gateway_ledger_signatures")
    assert sigs == len(fp.record_signatures(fp.word_hashes(TEXTS[3])))
    led.store.close()


def test_replicas_write_one_ledger(postgres_url: str) -> None:
    def replica(offset: int) -> None:
        led = Ledger(PostgresStore(postgres_url))
        led.open()
        led.write([record(offset + i, TEXTS[offset + i]) for i in range(10)])
        led.store.close()

    threads = [threading.Thread(target=replica, args=(k * 10,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = Ledger.at(postgres_url)
    reader.open()
    assert reader.store.count() == 30
    for i in (0, 15, 29):
        assert reader.match(TEXTS[i])[0].record.key_id == f"{i:016x}"
    reader.store.close()


async def test_gateway_ledger_on_postgres_attributes_an_excerpt(
        start_gateway: StartGateway, sim: Server, postgres_url: str,
        mint: MintToken) -> None:
    gw = await start_gateway(sim.url, watermark={"ledger_url": postgres_url})
    user = {"Authorization": f"Bearer {mint(tier='verified', sub='alice', scopes=())}"}
    admin = {"Authorization": f"Bearer {mint()}"}
    async with aiohttp.ClientSession() as http:
        body = chat("Write a long essay about rivers.", max_tokens=200, ignore_eos=True)
        async with http.post(gw.url + "/v1/chat/completions", json=body,
                             headers=user) as resp:
            assert resp.status == 200
            text = (await resp.json())["choices"][0]["message"]["content"]
        excerpt = " ".join(text.split()[20:90])
        for _ in range(50):  # the ledger writes after the response, off the hot path
            async with http.post(gw.url + "/admin/v1/watermark/detect",
                                 json={"text": excerpt}, headers=admin) as resp:
                assert resp.status == 200
                found = await resp.json()
            if found["ledger"]["matches"]:
                break
            await asyncio.sleep(0.1)
    top = found["ledger"]["matches"][0]
    assert top["tier"] == "verified" and top["decision"] == "match"


def test_detect_cli_reads_the_ledger_from_a_url(
        postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_SECRET_WATERMARK", raising=False)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "watermark").write_bytes(SECRET)
    led = Ledger.at(postgres_url)
    led.open()
    led.write([Record(REQUEST_ID, KID, "public", "m", NOW, "v1",
                      tuple(fp.word_hashes(PROSE)))])
    led.store.close()
    monkeypatch.setattr("sys.stdin", io.StringIO(PROSE[50:600]))  # no mark: the ledger
    assert run(["watermark", "detect", "-", "--home", str(tmp_path),
                "--ledger", postgres_url]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["result"] == "ledger"
    assert report["ledger"]["matches"][0]["request_id"] == REQUEST_ID


def test_a_lost_session_fails_one_write_then_is_replaced(postgres_url: str) -> None:
    led = Ledger.at(postgres_url)
    led.open()
    led.write([record(1, TEXTS[1])])
    with psycopg.connect(postgres_url, autocommit=True) as db:  # as a server restart does
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(psycopg.OperationalError):  # Ledger's writer counts it as an error
        led.write([record(2, TEXTS[2])])
    led.write([record(3, TEXTS[3])])
    assert led.store.count() == 2
    assert led.match(TEXTS[3])[0].record.key_id == f"{3:016x}"
    led.store.close()
