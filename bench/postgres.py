"""The PostgreSQL stores at fleet scale: audit appends (one writer, several replicas),
audit queries and a full verify at N records, ledger bulk load, matching and retention.

    python bench/postgres.py --url postgresql://user@host/scratch   # an empty database
    python bench/postgres.py --url ... --quick                       # smoke run

The database must be empty and is left filled (drop it afterwards). Numbers depend on the
server's disk and CPUs: run it where the fleet's database will run.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
import uuid
from collections.abc import Callable

import psycopg

from gateway.audit.postgres import PostgresStore as AuditStore
from gateway.audit.record import AuditRecord
from gateway.audit.store import QueryFilter
from gateway.audit.verify import verify_chain
from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.ledger import DAY_S, Ledger, Prepared, Record
from gateway.pipeline.watermark.ledger_postgres import PostgresStore as LedgerStore

TIERS = ("public", "research", "internal")
DECISIONS = ("allow",) * 90 + ("rate_limited",) * 8 + ("block",) * 2  # rare ones too
WORDS = [f"word{i}" for i in range(40)]  # synthetic prose: only the hashes matter


def record(i: int, rng: random.Random, now: float) -> AuditRecord:
    return AuditRecord(request_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                       time=now - 30 * DAY_S + i, key_id=f"k_{rng.randrange(5000):024x}",
                       tier=rng.choice(TIERS), model="m", route="chat", status=200,
                       decision=rng.choice(DECISIONS), prompt_tokens=rng.randrange(900),
                       completion_tokens=rng.randrange(900), policy_version="v1")


def ms(fn: Callable[[], object], runs: int = 20) -> str:
    """Median and worst of `runs` calls, in milliseconds."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return f"{times[len(times) // 2]:.2f} / {times[-1]:.2f} ms"


def analyze(url: str) -> None:
    """What autovacuum does within a minute of a bulk load: the planner needs the
    statistics to pick the time index for narrow time ranges."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("ANALYZE")


def audit(url: str, rows: int, rng: random.Random) -> None:
    now = time.time()
    store = AuditStore(url)
    t0 = time.perf_counter()
    for start in range(2000):  # one record per transaction: the floor
        store.append([record(start, rng, now)])
    print(f"audit append, 1 record per batch: {2000 / (time.perf_counter() - t0):,.0f} /s")

    def replica(k: int) -> None:
        own = AuditStore(url)
        for b in range(40):
            own.append([record(k * 10_000 + b * 16 + j, rng, now) for j in range(16)])
        own.close()

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"audit append, 4 replicas x batches of 16: "
          f"{4 * 40 * 16 / (time.perf_counter() - t0):,.0f} records/s (one chain)")
    t0 = time.perf_counter()
    done = 2000 + 4 * 40 * 16
    while done < rows:
        n = min(512, rows - done)
        store.append([record(done + j, rng, now) for j in range(n)])
        done += n
    print(f"audit bulk append (batches of 512) to {rows:,}: "
          f"{(rows - 2560) / (time.perf_counter() - t0):,.0f} records/s")
    analyze(url)
    key = f"k_{rng.randrange(5000):024x}"
    middle = rows // 2
    cases: dict[str, Callable[[], object]] = {
        "newest page": lambda: store.query(QueryFilter(), 100, None),
        "tier filter": lambda: store.query(QueryFilter(tier="research"), 100, None),
        "key filter": lambda: store.query(QueryFilter(key_id=key), 100, None),
        "rare decision": lambda: store.query(QueryFilter(decision="block"), 100, None),
        "deep page": lambda: store.query(QueryFilter(tier="public"), 100, middle),
        "one hour": lambda: store.query(QueryFilter(since=now - 30 * DAY_S + rows / 2,
                                                    until=now - 30 * DAY_S + rows / 2 + 3600),
                                        100, None),
    }
    for name, fn in cases.items():
        print(f"audit query {name} (100 rows) p50 / max: {ms(fn)}")
    store.close()
    t0 = time.perf_counter()
    result = verify_chain(url)
    print(f"audit verify {result.checked:,} records: {time.perf_counter() - t0:.1f} s, "
          f"ok={result.ok}")


def text(rng: random.Random, n: int = 200) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n))


def ledger(url: str, records: int, chunks: int, rng: random.Random) -> None:
    store = LedgerStore(url)
    led = Ledger(store)
    led.open()
    now = time.time()
    t0 = time.perf_counter()
    batch: list[Prepared] = []
    for i in range(records):  # synthetic fingerprints: random band keys, as in real use
        rec = Record(uuid.UUID(int=rng.getrandbits(128)).hex, f"{i:016x}", "public", "m",
                     now - rng.random() * 30 * DAY_S, "v1", ())
        batch.append(Prepared(rec, [os.urandom(2 * fp.PERMS) for _ in range(chunks)],
                              [[(b, rng.getrandbits(48)) for b in range(fp.BANDS)]
                               for _ in range(chunks)]))
        if len(batch) == 5000:
            store.add(batch)
            batch = []
    store.add(batch)
    real = [text(rng) for _ in range(30)]
    led.write([Record(uuid.uuid4().hex, f"real{i:012x}", "public", "m", now, "v1",
                      tuple(fp.word_hashes(t))) for i, t in enumerate(real)])
    analyze(url)
    print(f"ledger load {records:,} x {chunks} chunks ({records * chunks * fp.BANDS:,} band "
          f"rows): {time.perf_counter() - t0:.0f} s")
    hits = iter(real * 2)
    print("ledger match() 60-word excerpt p50 / max: "
          + ms(lambda: led.match(" ".join(next(hits).split()[40:100])), 30))
    print("ledger match() unrelated text p50 / max: " + ms(lambda: led.match(text(rng)), 30))
    found = sum(bool(m) and m[0].record.key_id == f"real{i:012x}"
                for i, m in enumerate(led.match(" ".join(t.split()[40:100])) for t in real))
    print(f"ledger excerpts attributed: {found}/{len(real)}")
    t0 = time.perf_counter()
    removed = led.purge(older_than_days=29, now=now)
    print(f"ledger retention of 1 day ({removed:,} records): {time.perf_counter() - t0:.1f} s")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="an empty scratch database")
    parser.add_argument("--audit-rows", type=int, default=1_000_000)
    parser.add_argument("--ledger-records", type=int, default=250_000)
    parser.add_argument("--chunks", type=int, default=4, help="chunks per ledger record")
    parser.add_argument("--quick", action="store_true", help="small numbers, a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.audit_rows, args.ledger_records = 20_000, 5_000
    rng = random.Random(1)
    audit(args.url, args.audit_rows, rng)
    ledger(args.url, args.ledger_records, args.chunks, rng)


if __name__ == "__main__":
    main()
