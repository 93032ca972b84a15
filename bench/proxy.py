"""Bare-proxy overhead: the same load straight at the simulator and through the gateway.

Starts `gateway sim` and `gateway serve --upstream <sim>` as separate processes, drives
fixed-concurrency load from this process, and prints, for each scenario, requests/s and
p50/p99 latency direct and via the gateway, the added latency, and the gateway's own CPU
time per request and per relayed chunk (from /proc, so the load generator's CPU is not
counted). Targets (issue 2): <= 250 us CPU per non-streaming request, <= 25 us per relayed
chunk, <= 0.6 ms added p50 unloaded, 256 slow streams with < 1 ms added TTFT.

    python bench/proxy.py [--requests N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from gateway.devkeys import mint_token

MODEL = "sim-llama-3-8b-instruct"
TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _start(args: list[str], url: str, home: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_HOME": home}
    if NO_LIMITS:
        env["GATEWAY_POLICIES"] = _unlimited_policies(home)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"could not start: gateway {' '.join(args)}")


NO_LIMITS = False
ROOT = Path(__file__).resolve().parent.parent


def _unlimited_policies(home: str) -> str:
    """A copy of the shipped policies with the trusted tier's limits removed."""
    import shutil

    import yaml

    target = Path(home) / "policies-unlimited"
    if not target.exists():
        shutil.copytree(ROOT / "policies", target)
        tiers = yaml.safe_load((target / "tiers.yaml").read_text())
        tiers["tiers"]["trusted"].pop("limits", None)
        (target / "tiers.yaml").write_text(yaml.safe_dump(tiers))
    return str(target)


@dataclass
class Result:
    latencies: list[float]
    ttfts: list[float]
    chunks: int
    wall: float

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall

    def pct(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


HEADERS = {"Content-Type": "application/json"}


async def _one(http: aiohttp.ClientSession, url: str, body: bytes,
               stream: bool) -> tuple[float, float, int]:
    started = time.perf_counter()
    ttft, chunks = 0.0, 0
    async with http.post(url, data=body, headers=HEADERS) as resp:
        if resp.status != 200:
            raise SystemExit(f"unexpected status {resp.status}: {await resp.text()}")
        if not stream:
            await resp.read()
        else:
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunks += 1
                    if chunks == 1:
                        ttft = time.perf_counter() - started
    return time.perf_counter() - started, ttft, chunks


async def _load(url: str, body: dict[str, object], total: int, concurrency: int) -> Result:
    raw = orjson.dumps(body)
    stream = bool(body.get("stream"))
    latencies: list[float] = []
    ttfts: list[float] = []
    chunks = 0
    remaining = total
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def worker() -> None:
            nonlocal remaining, chunks
            while remaining > 0:
                remaining -= 1
                latency, ttft, n = await _one(http, url, raw, stream)
                latencies.append(latency)
                ttfts.append(ttft)
                chunks += n

        await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))  # warm-up
        latencies.clear(), ttfts.clear()
        chunks, remaining = 0, total
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return Result(latencies, ttfts, chunks, wall)


async def _compare(name: str, direct: str, via: str, gw_pid: int,
                   run: Callable[[str], Awaitable[Result]], ttft: bool = False) -> Result:
    d = await run(direct)
    cpu0 = _cpu_seconds(gw_pid)
    g = await run(via)
    cpu = _cpu_seconds(gw_pid) - cpu0
    values = (lambda r: r.ttfts) if ttft else (lambda r: r.latencies)
    label = "TTFT" if ttft else "latency"
    print(f"\n{name}")
    print(f"  direct : {d.rps:8.0f} req/s  {label} p50 {d.pct(values(d), .5):7.2f} ms  "
          f"p99 {d.pct(values(d), .99):7.2f} ms")
    print(f"  gateway: {g.rps:8.0f} req/s  {label} p50 {g.pct(values(g), .5):7.2f} ms  "
          f"p99 {g.pct(values(g), .99):7.2f} ms")
    print(f"  added {label} p50: {g.pct(values(g), .5) - d.pct(values(d), .5):.3f} ms   "
          f"gateway CPU per request: {cpu / len(g.latencies) * 1e6:.0f} us")
    if g.chunks:
        print(f"  relayed chunks/s: {g.chunks / g.wall:.0f}   gateway CPU per chunk (all "
              f"cost / chunks): {cpu / g.chunks * 1e6:.1f} us")
    g.latencies.append(cpu)  # carried to the caller: last element is the CPU seconds
    return g


async def main(requests: int) -> None:
    sim_port, gw_port = _free_port(), _free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    gw_url = f"http://127.0.0.1:{gw_port}"
    home = tempfile.mkdtemp(prefix="gateway-bench-")
    # The trusted tier: no system prompt and limits far above this load, so the figures
    # are the proxy's own cost (auth, shape, tier, limits, audit, relay).
    HEADERS["Authorization"] = "Bearer " + mint_token(Path(home), tier="trusted", sub="bench")
    sim = _start(["sim", "--port", str(sim_port)], sim_url + "/health", home)
    gw = _start(["serve", "--port", str(gw_port), "--upstream", sim_url], gw_url + "/readyz",
                home)
    chat = "/v1/chat/completions"
    try:
        small = {"model": MODEL, "messages": [{"role": "user", "content": "bench"}],
                 "max_tokens": 16, "ignore_eos": True}
        streamed = {**small, "max_tokens": 64, "stream": True}
        slow = {**small, "max_tokens": 50, "stream": True,
                "messages": [{"role": "user", "content": "[[sim:tps=50]] bench"}]}

        await _compare("unloaded, non-streaming, 16 tokens, concurrency 1", sim_url + chat,
                       gw_url + chat, gw.pid, lambda u: _load(u, small, requests // 10, 1))
        ns = await _compare("non-streaming, 16 tokens, concurrency 32", sim_url + chat,
                            gw_url + chat, gw.pid, lambda u: _load(u, small, requests, 32))
        per_request_cpu = ns.latencies.pop() / len(ns.latencies)
        st = await _compare("streaming, 64 tokens, concurrency 32", sim_url + chat,
                            gw_url + chat, gw.pid,
                            lambda u: _load(u, streamed, requests // 4, 32))
        cpu = st.latencies.pop()
        net = (cpu - per_request_cpu * len(st.latencies)) / st.chunks
        print(f"  gateway CPU per chunk, per-request cost taken out: {net * 1e6:.1f} us")
        await _compare("256 concurrent slow streams (50 tokens/s, 50 tokens)", sim_url + chat,
                       gw_url + chat, gw.pid, lambda u: _load(u, slow, 512, 256), ttft=True)
        print(f"\ngateway RSS: {_rss_mib(gw.pid):.0f} MiB")
    finally:
        for proc in (gw, sim):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--no-limits", action="store_true",
                        help="the same run with the trusted tier's rate limits removed")
    args = parser.parse_args()
    NO_LIMITS = args.no_limits
    asyncio.run(main(400 if args.quick else args.requests))
