"""Shared by the bench scripts: start `gateway` subprocesses on free loopback ports, read
their CPU time and memory from /proc, and build policy copies for comparison runs."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
MODEL = "sim-llama-3-8b-instruct"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start(args: list[str], ready_url: str, home: str, timeout_s: float = 60,
          **env: str) -> subprocess.Popen[bytes]:
    """`python -m gateway ARGS`, returned once `ready_url` answers 2xx."""
    return start_command([sys.executable, "-m", "gateway", *args], ready_url, home,
                         timeout_s, **env)


def start_command(command: list[str], ready_url: str, home: str, timeout_s: float = 60,
                  **env: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_HOME": home, **env}
    # What the process says goes to a file, so a start that fails can say why.
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL,
                                stderr=errors)
        if _ready(proc, ready_url, timeout_s):
            return proc
        how = f"exited with {proc.returncode}" if proc.poll() is not None else \
            f"not ready after {timeout_s:g} s"
        proc.kill()
        proc.wait()
        errors.seek(0)
        said = errors.read()[-2000:].decode(errors="replace").strip()
    raise SystemExit(f"could not start ({how}): {' '.join(command)}"
                     + (f"\n{said}" if said else ""))


def _ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            if proc.poll() is not None:
                return False
            time.sleep(0.1)
    return False


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


def policy_copy(target: Path, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> str:
    """A copy of the shipped policies, with `edit(tiers_doc, classifiers_doc)` applied."""
    shutil.copytree(ROOT / "policies", target)
    tiers = yaml.safe_load((target / "tiers.yaml").read_text())
    classifiers = yaml.safe_load((target / "classifiers.yaml").read_text())
    edit(tiers, classifiers)
    (target / "tiers.yaml").write_text(yaml.safe_dump(tiers))
    (target / "classifiers.yaml").write_text(yaml.safe_dump(classifiers))
    return str(target)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def _has_text(data: bytes) -> bool:
    choices = orjson.loads(data).get("choices") or []
    return any((c.get("delta") or {}).get("content") for c in choices)


async def stream_timings(url: str, token: str, n: int, concurrency: int, tokens: int,
                         tps: int, prompt: str = "Tell me a long story about rivers",
                         ) -> dict[str, float]:
    """Time to the first content chunk and the gaps between content chunks of n chat
    streams of `tokens` tokens at `tps` simulated tokens/s, p50/p99 in ms."""
    ttfts: list[float] = []
    gaps: list[float] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    left = n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     headers=headers) as http:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                body = orjson.dumps({
                    "model": MODEL, "max_tokens": tokens, "ignore_eos": True, "stream": True,
                    "messages": [{"role": "user",
                                  "content": f"[[sim:tps={tps}]] {prompt}, number {left}."}]})
                started = last = time.perf_counter()
                first = True
                async with http.post(url + "/v1/chat/completions", data=body) as resp:
                    async for line in resp.content:
                        if not line.startswith(b"data: {") or not _has_text(line[6:]):
                            continue
                        now = time.perf_counter()
                        if first:
                            ttfts.append((now - started) * 1000)
                            first = False
                        else:
                            gaps.append((now - last) * 1000)
                        last = now

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"ttft_p50_ms": round(_percentile(ttfts, 0.5), 1),
            "ttft_p99_ms": round(_percentile(ttfts, 0.99), 1),
            "gap_p50_ms": round(_percentile(gaps, 0.5), 2),
            "gap_p99_ms": round(_percentile(gaps, 0.99), 2)}


