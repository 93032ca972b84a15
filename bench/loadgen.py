"""Load generator processes for bench/capacity.py: one `Job` runs in one process (so the
generator can use several cores) and returns raw timings; the parent merges them.

Two shapes of load:

- `rate`: open loop at a fixed arrival rate. Request n is due at n / rate and its latency
  is measured from when it was due, not from when it was sent, so a generator or server
  that falls behind shows as latency instead of silently lowering the rate (no
  coordinated omission). How late the generator itself sent (`late`) is kept apart.
- `streams`: a fixed number of slow streams held open, each re-opened as it ends, with
  staggered starts; time to the first content token and to `[DONE]` per stream.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

CHAT = "/v1/chat/completions"
MODEL = "sim-llama-3-8b-instruct"


@dataclass(frozen=True)
class Job:
    kind: str  # rate | streams
    url: str
    tokens: tuple[str, ...]  # bearer tokens to rotate through; empty: none (direct)
    amount: float  # rate: requests/s of this process; streams: streams of this process
    measure_s: float  # the window whose timings count
    warm_s: float  # before the window: load runs, timings are dropped
    start_at: float  # wall clock (time.time) when all processes begin together
    phase: float  # 0 <= phase < 1: this process's offset, so processes interleave
    stream_tokens: int = 50
    stream_tps: float = 5.0
    grace_s: float = 10.0  # how long the stragglers of a rate step may still take


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # s; rate: due to end
    late: list[float] = field(default_factory=list)  # s the generator sent after due
    own_ms: list[float] = field(default_factory=list)  # x-gateway-overhead-ms headers
    ttfts: list[float] = field(default_factory=list)  # s; streams: sent to first token
    errors: int = 0
    first_error: str = ""

    def fail(self, what: str) -> None:
        if not self.errors:
            self.first_error = what[:300]
        self.errors += 1

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.late += other.late
        self.own_ms += other.own_ms
        self.ttfts += other.ttfts
        if other.errors and not self.errors:
            self.first_error = other.first_error
        self.errors += other.errors


def ready() -> None:
    """Submitted once per process before the first step: imports and spawning done."""


def run(job: Job) -> Tally:
    """Process entry point."""
    return asyncio.run(_rate(job) if job.kind == "rate" else _streams(job))


def _headers(job: Job, n: int) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if job.tokens:
        headers["Authorization"] = f"Bearer {job.tokens[n % len(job.tokens)]}"
    return headers


def _body(job: Job, n: int) -> bytes:
    if job.kind == "rate":
        text = f"Summarise the water cycle in one line, please (note {n})."
        return orjson.dumps({"model": MODEL, "max_tokens": 16, "ignore_eos": True,
                             "messages": [{"role": "user", "content": text}]})
    text = (f"[[sim:tps={job.stream_tps:g}]] Tell me a calm story about rivers and hills, "
            f"part {n}.")
    return orjson.dumps({"model": MODEL, "max_tokens": job.stream_tokens, "ignore_eos": True,
                         "stream": True, "messages": [{"role": "user", "content": text}]})


async def _begin(job: Job) -> float:
    """Sleep until the common start; return it on this process's monotonic clock."""
    wait = max(0.0, job.start_at - time.time())
    await asyncio.sleep(wait)
    return time.monotonic()


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=120))


async def _rate(job: Job) -> Tally:
    tally = Tally()
    async with _session() as http:
        began = await _begin(job)
        pending: set[asyncio.Task[None]] = set()
        n = 0
        while (due := began + (n + job.phase) / job.amount) < began + job.warm_s + job.measure_s:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            counted = due >= began + job.warm_s
            task = asyncio.create_task(_request(http, job, n, due, counted, tally))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        if pending:
            _, unfinished = await asyncio.wait(pending, timeout=job.grace_s)
            for task in unfinished:
                task.cancel()
            if unfinished:
                tally.fail(f"{len(unfinished)} requests unfinished {job.grace_s:g} s after "
                           "the step")
                tally.errors += len(unfinished) - 1
            await asyncio.gather(*unfinished, return_exceptions=True)
    return tally


async def _request(http: aiohttp.ClientSession, job: Job, n: int, due: float,
                   counted: bool, tally: Tally) -> None:
    sent = time.monotonic()
    try:
        async with http.post(job.url + CHAT, data=_body(job, n),
                             headers=_headers(job, n)) as resp:
            text = await resp.read()
            if resp.status != 200:
                tally.fail(f"HTTP {resp.status} {text[:200]!r}")
                return
            own = resp.headers.get("x-gateway-overhead-ms")
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.fail(repr(exc))
        return
    if counted:
        tally.latencies.append(time.monotonic() - due)
        tally.late.append(sent - due)
        if own is not None:
            tally.own_ms.append(float(own))


def _content(line: bytes) -> bool:
    """A chunk with text in it (the role-only first chunk and the usage chunk have none)."""
    if not line.startswith(b"data: {") or b'"content":"' not in line:
        return False
    choices = orjson.loads(line[6:]).get("choices") or []
    return any((c.get("delta") or {}).get("content") for c in choices)


async def _streams(job: Job) -> Tally:
    tally = Tally()
    count = int(job.amount)
    length = job.stream_tokens / job.stream_tps
    async with _session() as http:
        began = await _begin(job)
        window = (began + job.warm_s, began + job.warm_s + job.measure_s)

        async def worker(i: int) -> None:
            # Staggered over one stream's length, so streams end and re-open evenly.
            await asyncio.sleep(length * (i + job.phase) / count)
            n = i
            # Full load until the last stream that counts has ended.
            while (started := time.monotonic()) < window[1] + length:
                ok = await _stream(http, job, n, tally, window[0] <= started < window[1])
                n += count
                if not ok:
                    await asyncio.sleep(1)  # no tight loop of failures

        await asyncio.gather(*(worker(i) for i in range(count)))
    return tally


async def _stream(http: aiohttp.ClientSession, job: Job, n: int, tally: Tally,
                  counted: bool) -> bool:
    started = time.monotonic()
    first = 0.0
    try:
        async with http.post(job.url + CHAT, data=_body(job, n),
                             headers=_headers(job, n)) as resp:
            if resp.status != 200:
                tally.fail(f"HTTP {resp.status} {(await resp.read())[:200]!r}")
                return False
            own = resp.headers.get("x-gateway-overhead-ms")
            async for line in resp.content:
                if line.startswith(b'data: {"error"'):
                    tally.fail(line[6:206].decode(errors="replace"))
                    return False
                if line.startswith(b"data: [DONE]"):
                    break
                if not first and _content(line):
                    first = time.monotonic()
            else:
                tally.fail("stream ended without [DONE]")
                return False
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.fail(repr(exc))
        return False
    if not first:
        tally.fail("stream without any content")
        return False
    if counted:
        tally.ttfts.append(first - started)
        tally.latencies.append(time.monotonic() - started)
        if own is not None:
            tally.own_ms.append(float(own))
    return True
