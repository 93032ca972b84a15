"""The ledger on a real PostgreSQL server: retention by partition, shared by replicas,
and the gateway end to end (the shared behaviour runs in test_ledger.py for both stores)."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import psycopg

from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.ledger import DAY_S, Ledger
from gateway.pipeline.watermark.ledger_postgres import PostgresStore
from tests.conftest import MintToken, Server, StartGateway, chat
from tests.pipeline.watermark.test_ledger import NOW, TEXTS, record


def _partitions(url: str) -> int:
    with psycopg.connect(url) as db:
        (n,) = db.execute("SELECT count(*) FROM pg_inherits i JOIN pg_class p "
                          "ON p.oid = i.inhparent WHERE p.relname = "
                          "'gateway_ledger_bands'").fetchone()
    return int(n)


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
    with psycopg.connect(postgres_url) as db:
        (sigs,) = db.execute("SELECT count(*) FROM gateway_ledger_signatures").fetchone()
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
