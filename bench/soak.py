"""Soak: steady load through the full pipeline for a bounded time, watching the gateway
for leaks (memory, file descriptors, asyncio tasks).

Starts `gateway sim` and a `full` gateway (bench/stack.py: public tier, every stage on,
limits far above the load), then for --minutes holds --streams slow streams open, each
re-opened when it ends, plus --rate non-streaming requests per second (open loop).
Every --sample-s seconds it records the gateway's RSS and open descriptors (from /proc)
and its asyncio task count (the `gateway_asyncio_tasks` gauge on /metrics).

At the end it prints the samples, each series' start, end and least-squares slope per
minute over the samples after --warmup-s, and the gateway once idle (clients gone).
It exits 1 when a leak series (RSS, fds, tasks) grows faster than its bound, on any
error response or broken stream, when the gateway still reports open streams or holds
more than --max-task-residue tasks above its pre-load count once idle, or if it dies.

Memory is the slow series: bounded caches (classifier embeddings, SQLite's page cache of
the growing ledger, up to 64 MiB) fill in proportion to traffic, so RSS climbs for
minutes and then flattens, while a leak keeps a steady slope. Hence the long default
warm-up; `--profile bare` runs the same load without classification, moderation and
watermark, to tell which side growth comes from.

    python bench/soak.py [--minutes 8] [--streams 300] [--rate 20] [--profile full]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import orjson
from procs import MODEL, rss_mib
from stack import Gateway, metric, open_files, running

CHAT = "/v1/chat/completions"
LEAKS = ("rss_mib", "fds", "tasks")  # the series with a growth bound
SERIES = (*LEAKS, "streams")


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started
    rss_mib: float
    fds: int
    tasks: int
    streams: int  # streams the load generator holds open
    rps: float  # responses completed per second since the previous sample
    errors: int  # so far


@dataclass(frozen=True)
class Bounds:
    """Largest growth per minute tolerated after the warm-up."""
    rss_mib: float
    fds: float
    tasks: float


@dataclass(frozen=True)
class Trend:
    start: float
    end: float
    slope: float  # per minute


def slope_per_minute(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over ts (seconds), scaled to a minute."""
    mean_t, mean_y = sum(ts) / len(ts), sum(ys) / len(ys)
    spread = sum((t - mean_t) ** 2 for t in ts)
    if spread == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True)) / spread


def trends(samples: list[Sample], warmup_s: float) -> dict[str, Trend]:
    """Per series, over the samples taken after the warm-up."""
    kept = [s for s in samples if s.t >= warmup_s]
    if len(kept) < 2:
        return {}
    ts = [s.t for s in kept]
    out = {}
    for name in SERIES:
        ys = [float(getattr(s, name)) for s in kept]
        out[name] = Trend(ys[0], ys[-1], slope_per_minute(ts, ys))
    return out


def growth_problems(samples: list[Sample], warmup_s: float, bounds: Bounds) -> list[str]:
    found = trends(samples, warmup_s)
    if len(found) == 0:
        return [f"fewer than 2 samples after the {warmup_s:.0f} s warm-up"]
    return [f"{name} grows {found[name].slope:.2f}/min (bound {getattr(bounds, name)})"
            for name in LEAKS if found[name].slope > getattr(bounds, name)]


@dataclass
class Load:
    deadline: float  # monotonic; nothing new starts after it
    open_streams: int = 0
    completed: int = 0
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.messages) < 5:
            self.messages.append(what)


def _bodies(kind: str, tps: float, tokens: int) -> Iterator[bytes]:
    """Benign prompts, each different (no cache sees the same text twice)."""
    for n in itertools.count():
        if kind == "stream":
            text = f"[[sim:tps={tps:g}]] Tell me a calm story about rivers and hills, part {n}."
            body = {"model": MODEL, "stream": True, "max_tokens": tokens, "ignore_eos": True,
                    "messages": [{"role": "user", "content": text}]}
        else:
            text = f"Summarise the water cycle in one line, please (note {n})."
            body = {"model": MODEL, "max_tokens": 16, "ignore_eos": True,
                    "messages": [{"role": "user", "content": text}]}
        yield orjson.dumps(body)


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def _stream_once(http: aiohttp.ClientSession, url: str, token: str, body: bytes,
                       ) -> str | None:
    """One stream to its end; a description of what went wrong, or None."""
    async with http.post(url + CHAT, data=body,
                         headers=_headers(token)) as resp:
        if resp.status != 200:
            return f"stream: HTTP {resp.status} {(await resp.text())[:200]}"
        async for line in resp.content:
            if line.startswith(b'data: {"error"'):
                return f"stream: {line[6:206].decode(errors='replace')}"
            if line.startswith(b"data: [DONE]"):
                return None
    return "stream: ended without [DONE]"


async def _streams(http: aiohttp.ClientSession, gw: Gateway, load: Load, count: int,
                   tps: float, tokens: int) -> None:
    bodies = _bodies("stream", tps, tokens)
    length = tokens / tps if tps > 0 else 1.0

    async def worker(i: int) -> None:
        # Staggered starts, so streams end (and re-open) spread over time, not in waves.
        await asyncio.sleep(length * i / count)
        while time.monotonic() < load.deadline:
            load.open_streams += 1
            try:
                problem = await _stream_once(http, gw.url, gw.tokens[i % len(gw.tokens)],
                                             next(bodies))
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = f"stream: {exc!r}"
            finally:
                load.open_streams -= 1
            if problem is None:
                load.completed += 1
            else:
                load.fail(problem)
                await asyncio.sleep(1)  # no tight loop of failures

    await asyncio.gather(*(worker(i) for i in range(count)))


async def _request_once(http: aiohttp.ClientSession, gw: Gateway, token: str, body: bytes,
                        load: Load) -> None:
    try:
        async with http.post(gw.url + CHAT, data=body,
                             headers=_headers(token)) as resp:
            text = await resp.text()
            if resp.status != 200:
                load.fail(f"request: HTTP {resp.status} {text[:200]}")
                return
    except (TimeoutError, aiohttp.ClientError) as exc:
        load.fail(f"request: {exc!r}")
        return
    load.completed += 1


async def _requests(http: aiohttp.ClientSession, gw: Gateway, load: Load, rate: float,
                    ) -> None:
    """Open loop: request n starts at n / rate, however long earlier ones take."""
    if rate <= 0:
        return
    bodies = _bodies("request", 0, 16)
    pending: set[asyncio.Task[None]] = set()
    began = time.monotonic()
    for n in itertools.count():
        at = began + n / rate
        if at >= load.deadline:
            break
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        task = asyncio.create_task(
            _request_once(http, gw, gw.tokens[n % len(gw.tokens)], next(bodies), load))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


async def _tasks(http: aiohttp.ClientSession, gw: Gateway) -> tuple[int, int]:
    """The gateway's asyncio tasks and the streams it relays, from /metrics."""
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    return int(metric(text, "gateway_asyncio_tasks")), int(metric(text, "gateway_open_streams"))


async def _sampler(scrape: aiohttp.ClientSession, gw: Gateway, load: Load, every: float,
                   samples: list[Sample]) -> None:
    began = time.monotonic()
    last_t, last_done = began, 0
    while time.monotonic() + every <= load.deadline:
        await asyncio.sleep(every)
        if gw.proc.poll() is not None:
            load.fail(f"gateway exited with {gw.proc.returncode}")
            return
        now = time.monotonic()
        tasks, _ = await _tasks(scrape, gw)
        rps = (load.completed - last_done) / (now - last_t)
        sample = Sample(round(now - began, 1), rss_mib(gw.proc.pid), open_files(gw.proc.pid),
                        tasks, load.open_streams, rps, load.errors)
        samples.append(sample)
        print(f"{sample.t:7.0f} {sample.rss_mib:8.1f} {sample.fds:6d} {sample.tasks:6d} "
              f"{sample.streams:8d} {sample.rps:7.1f} {sample.errors:7d}", flush=True)
        last_t, last_done = now, load.completed


async def soak(args: argparse.Namespace, gw: Gateway) -> tuple[list[Sample], Load, dict[str, int]]:
    """Run the load; return the samples, the load's tally and the idle state after it."""
    async with aiohttp.ClientSession() as scrape:
        before, _ = await _tasks(scrape, gw)
        load = Load(time.monotonic() + args.minutes * 60)
        samples: list[Sample] = []
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=timeout) as http:
            await asyncio.gather(
                _streams(http, gw, load, args.streams, args.tps, args.stream_tokens),
                _requests(http, gw, load, args.rate),
                _sampler(scrape, gw, load, args.sample_s, samples))
        # The client's keep-alive connections are closed now; give the gateway a moment
        # to notice before counting what is left.
        await asyncio.sleep(args.settle_s)
        tasks, streams = await _tasks(scrape, gw)
        idle = {"tasks_before": before, "tasks": tasks, "open_streams": streams,
                "fds": open_files(gw.proc.pid), "rss_mib": round(rss_mib(gw.proc.pid))}
    return samples, load, idle


def report(samples: list[Sample], warmup_s: float, idle: dict[str, int]) -> None:
    print(f"\nafter the {warmup_s:.0f} s warm-up:   {'start':>9} {'end':>9} {'slope/min':>10}")
    for name, trend in trends(samples, warmup_s).items():
        print(f"  {name:22} {trend.start:9.1f} {trend.end:9.1f} {trend.slope:10.2f}")
    print("\nidle after the load: " + ", ".join(f"{k} {v}" for k, v in idle.items()))


def verdict(args: argparse.Namespace, samples: list[Sample], load: Load,
            idle: dict[str, int]) -> list[str]:
    bounds = Bounds(args.max_rss_slope, args.max_fd_slope, args.max_task_slope)
    found = growth_problems(samples, args.warmup_s, bounds)
    if load.errors:
        found.append(f"{load.errors} errors, first: " + " | ".join(load.messages))
    if idle["open_streams"]:
        found.append(f"{idle['open_streams']} streams still open once the clients left")
    if idle["tasks"] - idle["tasks_before"] > args.max_task_residue:
        found.append(f"{idle['tasks']} tasks once idle, {idle['tasks_before']} before the load")
    return found


async def main(args: argparse.Namespace) -> int:
    with running([args.profile]) as stack:
        gw = stack.gateways[args.profile]
        print(f"soak: {args.minutes:g} min, {args.streams} streams at {args.tps:g} tokens/s "
              f"({args.stream_tokens} tokens), {args.rate:g} requests/s, {args.profile} profile\n")
        print(f"{'time s':>7} {'RSS MiB':>8} {'fds':>6} {'tasks':>6} {'streams':>8} "
              f"{'req/s':>7} {'errors':>7}", flush=True)
        samples, load, idle = await soak(args, gw)
    report(samples, args.warmup_s, idle)
    problems = verdict(args, samples, load, idle)
    for problem in problems:
        print(f"FAIL: {problem}")
    print("\nsoak: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8)
    parser.add_argument("--profile", choices=("full", "bare"), default="full",
                        help="bare: no classification, moderation, watermark or limits "
                             "(to tell where growth comes from)")
    parser.add_argument("--streams", type=int, default=300, help="slow streams held open")
    parser.add_argument("--tps", type=float, default=4, help="tokens/s of each stream")
    parser.add_argument("--stream-tokens", type=int, default=64)
    parser.add_argument("--rate", type=float, default=20, help="non-streaming requests/s")
    parser.add_argument("--sample-s", type=float, default=10)
    parser.add_argument("--warmup-s", type=float, default=240)
    parser.add_argument("--settle-s", type=float, default=2)
    parser.add_argument("--max-rss-slope", type=float, default=4.0, help="MiB per minute")
    parser.add_argument("--max-fd-slope", type=float, default=5.0, help="per minute")
    parser.add_argument("--max-task-slope", type=float, default=10.0, help="per minute")
    parser.add_argument("--max-task-residue", type=int, default=5,
                        help="tasks above the pre-load count once idle")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
