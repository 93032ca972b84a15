"""Proxy overhead: the same load straight at the simulator and through three relays.

Starts `gateway sim` and, in front of it, as separate processes:

- `minimal`: bench/minrelay.py, the least an aiohttp relay can do (the reference point:
  what this machine charges for aiohttp's server and client alone);
- `bare`: the gateway with only its spine on (trusted tier: auth, shape, tier, upstream
  pool, audit log, metrics; no limits, classification, moderation or watermark);
- `queued` (only when asked for with `--only`): `bare` with `audit.acknowledge: queued`,
  so answers do not wait for their audit record's commit;
- `full`: the gateway with every stage on (public tier with its rate limits lifted: auth,
  shape and system prompt, classification incl. the embedding cascade, output moderation,
  watermark payload and ledger, audit).

For each scenario it prints requests/s, p50/p99 latency (or time to first token), the
added p50 over direct, and each relay's own CPU per request and per relayed chunk (from
/proc, so the load generator's CPU is not counted), with the ratio to `minimal`. Issue 2's
targets (<= 250 us CPU per request, <= 25 us per chunk, <= 0.6 ms added p50 unloaded,
256 slow streams with < 1 ms added TTFT) were set against a minimal relay costing about
145 us per request; the `minimal` row says what that reference costs on this machine.

The gateways log at their default level, INFO: one JSON line per request, written to
/dev/null (`--log-level WARNING` leaves the lines out, as runs before 2026-11-29 did).

The last scenario holds `--held` slow streams open (50 tokens/s each, opened one every
4 ms) and times the first token of new streams started meanwhile. On a 2-core machine
the simulator and the load generator share the cores with the relay: watch the `direct`
row, which is what the machine allows before any relay is added. One run's figures move
by a third between runs there: `--rounds 3` runs each scenario three times per relay, the
relays taking turns, and pools them (the CPU column adds its range per round).

    python bench/proxy.py [--requests N] [--quick] [--only minimal,bare,queued,full] [--held N]
                          [--log-level LEVEL] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from procs import MODEL, cpu_seconds, free_port, policy_copy, rss_mib, start, start_command, stop
from stack import EDITS

from gateway.devkeys import mint_token

HERE = Path(__file__).resolve().parent
CHAT = "/v1/chat/completions"


def _full(tiers: dict[str, Any], classifiers: dict[str, Any]) -> None:
    tiers["tiers"]["public"].pop("limits", None)


@dataclass
class Relay:
    name: str
    url: str
    pid: int | None  # None: the simulator itself (direct)
    token: str = ""


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    chunks: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    busy: float | None = None  # the relay's share of one core while holding streams

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall

    @staticmethod
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _one(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
               stream: bool, out: Result) -> None:
    started = time.perf_counter()
    chunks = 0
    async with http.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            raise SystemExit(f"unexpected status {resp.status}: {await resp.text()}")
        if not stream:
            await resp.read()
        else:
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunks += 1
                    if chunks == 1:
                        out.ttfts.append(time.perf_counter() - started)
    out.latencies.append(time.perf_counter() - started)
    out.chunks += chunks


async def _load(relay: Relay, body: dict[str, object], total: int, concurrency: int,
                ) -> Result:
    raw = orjson.dumps(body)
    stream = bool(body.get("stream"))
    headers = {"Content-Type": "application/json"}
    if relay.token:
        headers["Authorization"] = f"Bearer {relay.token}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def run(n: int, out: Result) -> None:
            remaining = n

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await _one(http, relay.url + CHAT, raw, headers, stream, out)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))

        await run(min(concurrency, total), Result())  # warm-up: connections, caches
        result = Result()
        cpu0 = cpu_seconds(relay.pid) if relay.pid else 0.0
        started = time.perf_counter()
        await run(total, result)
        result.wall = time.perf_counter() - started
        result.cpu = (cpu_seconds(relay.pid) - cpu0) if relay.pid else 0.0
    return result


async def _held(relay: Relay, streams: int = 256, probes: int = 100) -> Result:
    """`streams` slow streams (50 tokens/s) opened one every 4 ms and held; while all are
    open, `probes` new streams, one every 20 ms, each timed to its first token. This is
    the TTFT a client sees from a relay that is holding that many streams (the burst
    scenario above instead starts every stream in the same instant)."""
    headers = {"Content-Type": "application/json"}
    if relay.token:
        headers["Authorization"] = f"Bearer {relay.token}"

    def body(content: str, tokens: int) -> bytes:
        return orjson.dumps({"model": MODEL, "max_tokens": tokens, "ignore_eos": True,
                             "stream": True,
                             "messages": [{"role": "user", "content": content}]})

    # Held streams outlast the run (they are closed at its end); 1500 tokens is 30 s.
    hold, probe = body("[[sim:tps=50]] hold", 1500), body("[[sim:tps=50]] probe", 2)
    url = relay.url + CHAT
    result = Result()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def sink() -> None:
            # Held streams are drained as raw bytes: parsing each event in this process
            # would make the load generator, not the relay, the bottleneck.
            async with http.post(url, data=hold, headers=headers) as resp:
                if resp.status != 200:
                    raise SystemExit(f"unexpected status {resp.status}: {await resp.text()}")
                async for _ in resp.content.iter_any():
                    pass

        async def paced(count: int, every_s: float, start: Callable[[], Awaitable[None]],
                        ) -> list[asyncio.Task[None]]:
            tasks, begin = [], time.perf_counter()
            for i in range(count):
                tasks.append(asyncio.create_task(start()))
                await asyncio.sleep(max(0.0, begin + (i + 1) * every_s - time.perf_counter()))
            return tasks

        holders = await paced(streams, 0.004, sink)
        await asyncio.sleep(1.0)  # every stream open and sending
        cpu0 = cpu_seconds(relay.pid) if relay.pid else 0.0
        started = time.perf_counter()
        await asyncio.gather(*await paced(
            probes, 0.02, lambda: _one(http, url, probe, headers, True, result)))
        result.wall = time.perf_counter() - started
        if relay.pid:
            result.busy = (cpu_seconds(relay.pid) - cpu0) / result.wall
        open_now = sum(not task.done() for task in holders)
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    if open_now < streams:
        raise SystemExit(f"only {open_now} of {streams} held streams were still open")
    return result


Run = Callable[[Relay], Awaitable[Result]]


def _pooled(rounds: list[Result]) -> Result:
    """One relay's rounds of a scenario as one sample: their mean, in effect."""
    busy = [r.busy for r in rounds if r.busy is not None]
    return Result(latencies=[x for r in rounds for x in r.latencies],
                  ttfts=[x for r in rounds for x in r.ttfts],
                  chunks=sum(r.chunks for r in rounds), wall=sum(r.wall for r in rounds),
                  cpu=sum(r.cpu for r in rounds),
                  busy=sum(busy) / len(busy) if busy else None)


def _relay_cpu(res: Result, per_request: float | None) -> float:
    """CPU per request, or per chunk once `per_request` is taken out of each request."""
    if per_request is None:
        return res.cpu / len(res.latencies)
    return (res.cpu - per_request * len(res.latencies)) / res.chunks


async def scenario(title: str, relays: list[Relay], run: Run, rounds: int = 1,
                   ttft: bool = False, per_request_cpu: dict[str, float] | None = None,
                   ) -> dict[str, float]:
    """Print one table; return each relay's CPU per request (for the per-chunk figure).
    With several rounds, the relays take turns, so a slow spell of the machine falls on
    all of them; the figures pool the rounds, and the CPU column's range is per round."""
    label = "TTFT" if ttft else "latency"
    print(f"\n{title}")
    print(f"  {'':8} {'req/s':>8} {label + ' p50':>12} {'p99':>9} {'added p50':>10} "
          f"{'CPU/req':>9} {'CPU/chunk':>10} {'x minimal':>10}")
    runs: dict[str, list[Result]] = {r.name: [] for r in relays}
    for _ in range(rounds):
        for relay in relays:
            runs[relay.name].append(await run(relay))
    results = {name: _pooled(done) for name, done in runs.items()}
    direct = results["direct"]
    values: Callable[[Result], list[float]] = (
        (lambda r: r.ttfts) if ttft else (lambda r: r.latencies))
    cpu_per_request: dict[str, float] = {}
    for relay in relays:
        res = results[relay.name]
        p50, p99 = res.pct(values(res), .5), res.pct(values(res), .99)
        line = (f"  {relay.name:8} {res.rps:8.0f} {p50:9.2f} ms {p99:6.2f} ms "
                f"{p50 - res.pct(values(direct), .5):7.2f} ms")
        if res.busy is not None:
            line += f"   relay busy {res.busy * 100:3.0f}% of a core"
        elif relay.pid:
            taken_out = per_request_cpu[relay.name] if res.chunks and per_request_cpu else None
            per_chunk = taken_out is not None
            figure = _relay_cpu(res, taken_out)
            cpu_per_request[relay.name] = figure
            line += f" {res.cpu / len(res.latencies) * 1e6:6.0f} us"
            line += f" {figure * 1e6:7.1f} us" if per_chunk else f" {'':>10}"
            if relay.name != "minimal" and "minimal" in cpu_per_request:
                line += f" {figure / cpu_per_request['minimal']:9.1f}x"
            if rounds > 1:
                each = sorted(_relay_cpu(r, taken_out) * 1e6 for r in runs[relay.name])
                line += f"   rounds {each[0]:.{1 if per_chunk else 0}f}-" \
                        f"{each[-1]:.{1 if per_chunk else 0}f} us"
        print(line)
    return cpu_per_request


async def main(args: argparse.Namespace) -> None:
    home = tempfile.mkdtemp(prefix="gateway-bench-")
    sim_url = f"http://127.0.0.1:{free_port()}"
    procs = [start(["sim", "--port", sim_url.rsplit(":", 1)[1]], sim_url + "/health", home)]
    relays = [Relay("direct", sim_url, None)]
    try:
        for name in args.only:
            url = f"http://127.0.0.1:{free_port()}"
            port = url.rsplit(":", 1)[1]
            if name == "minimal":
                proc = start_command([sys.executable, str(HERE / "minrelay.py"), sim_url, port],
                                     url + "/health", home)
                relays.append(Relay(name, url, proc.pid))
            else:
                tier, edit = ("public", _full) if name == "full" else ("trusted", EDITS["bare"])
                policies = policy_copy(Path(home) / f"policies-{name}", edit)
                config = Path(home) / f"gateway-{name}.yaml"
                config.write_text(orjson.dumps(  # JSON is YAML
                    {"audit": {"acknowledge": "queued"}} if name == "queued" else {}).decode())
                proc = start(["serve", "--port", port, "--upstream", sim_url],
                             url + "/readyz", home, timeout_s=120, GATEWAY_POLICIES=policies,
                             GATEWAY_CONFIG=str(config), GATEWAY_LOG_LEVEL=args.log_level)
                relays.append(Relay(name, url, proc.pid,
                                    mint_token(Path(home), tier=tier, sub=f"bench-{name}")))
            procs.append(proc)
        await _scenarios(relays, args.requests, args.held, args.rounds)
        print("\nRSS: " + ", ".join(f"{r.name} {rss_mib(r.pid):.0f} MiB"
                                    for r in relays if r.pid))
    finally:
        stop(*reversed(procs))


async def _scenarios(relays: list[Relay], requests: int, held: int, rounds: int) -> None:
    small = {"model": MODEL, "messages": [{"role": "user", "content": "bench"}],
             "max_tokens": 16, "ignore_eos": True}
    streamed = {**small, "max_tokens": 64, "stream": True}
    slow = {**small, "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "[[sim:tps=50]] bench"}]}
    await scenario("unloaded, non-streaming, 16 tokens, concurrency 1", relays,
                   lambda r: _load(r, small, max(50, requests // 10), 1), rounds)
    per_request = await scenario("non-streaming, 16 tokens, concurrency 32", relays,
                                 lambda r: _load(r, small, requests, 32), rounds)
    await scenario("streaming, 64 tokens, concurrency 32 (CPU/chunk: per-request cost "
                   "taken out)", relays, lambda r: _load(r, streamed, requests // 4, 32),
                   rounds, per_request_cpu=per_request)
    await scenario("256 concurrent slow streams (50 tokens/s, 50 tokens), all started at once",
                   relays, lambda r: _load(r, slow, 512, 256), rounds, ttft=True)
    await scenario(f"new streams while {held} slow streams are held (one every 20 ms)",
                   relays, lambda r: _held(r, streams=held), rounds, ttft=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each scenario per relay, taking turns; one run moves by "
                             "a third between runs on a shared 2-core machine")
    parser.add_argument("--held", type=int, default=256,
                        help="streams held open while new streams are timed")
    parser.add_argument("--log-level", default="INFO",
                        help="the gateways' log level: INFO (their default) writes one line "
                             "per request, which is part of what a request costs")
    parser.add_argument("--only", default="minimal,bare,full",
                        help="comma-separated relays among minimal, bare, queued, full")
    ns = parser.parse_args()
    ns.only = [name for name in ns.only.split(",") if name]
    if ns.quick:
        ns.requests = 400
    asyncio.run(main(ns))
