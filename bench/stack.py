"""Shared by bench/soak.py and bench/capacity.py: the simulator and gateways in the two
profiles they compare, plus what they read off a running gateway (open files, metrics).

- `full`: the public tier with every stage on (auth, shape and system prompt,
  classification incl. the embedding cascade, rate limits set far above the load so the
  limiter still runs, output moderation, watermark payload and ledger, audit);
- `bare`: the trusted tier with limits, classification, moderation and the watermark
  off. Auth, request shaping, the upstream pool, metrics and the audit log stay: no
  setting turns them off.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import free_port, policy_copy, start, stop

from gateway.devkeys import mint_token

# Far above any load a benchmark makes, so nothing is refused but the limiter still runs.
HUGE = 10**12
PROFILES = {"full": "public", "bare": "trusted"}


def _full(tiers: dict[str, Any], classifiers: dict[str, Any]) -> None:
    tiers["tiers"]["public"]["limits"] = {
        "requests_per_minute": HUGE, "tokens_per_minute": HUGE,
        "concurrent_requests": HUGE, "tokens_per_day": HUGE}


def _bare(tiers: dict[str, Any], classifiers: dict[str, Any]) -> None:
    trusted = tiers["tiers"]["trusted"]
    trusted.pop("limits", None)
    trusted["watermark"] = {"payload": False, "ledger": False}
    for name in ("rules", "structure", "embedding", "moderation"):
        classifiers["classifiers"].setdefault(name, {})["enabled"] = False


EDITS = {"full": _full, "bare": _bare}


@dataclass(frozen=True)
class Gateway:
    profile: str
    url: str
    proc: subprocess.Popen[bytes]
    tokens: tuple[str, ...]  # several subjects, so per-key limiter state is exercised


@dataclass(frozen=True)
class Stack:
    home: Path
    sim_url: str
    gateways: dict[str, Gateway]


def raise_open_files_limit() -> None:
    """Hundreds of streams need two descriptors each in the gateway (client and upstream);
    the children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def running(profiles: list[str], subjects: int = 8) -> Iterator[Stack]:
    """`gateway sim` and one `gateway serve --upstream <sim>` per profile, stopped on exit."""
    raise_open_files_limit()
    home = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    sim_url = f"http://127.0.0.1:{free_port()}"
    procs: list[subprocess.Popen[bytes]] = [
        start(["sim", "--port", sim_url.rsplit(":", 1)[1]], sim_url + "/health", str(home))]
    gateways: dict[str, Gateway] = {}
    try:
        for profile in profiles:
            port = free_port()
            policies = policy_copy(home / f"policies-{profile}", EDITS[profile])
            url = f"http://127.0.0.1:{port}"
            proc = start(["serve", "--port", str(port), "--upstream", sim_url],
                         url + "/readyz", str(home), timeout_s=120, GATEWAY_POLICIES=policies)
            procs.append(proc)
            tokens = tuple(mint_token(home, tier=PROFILES[profile], sub=f"bench-{profile}-{i}")
                           for i in range(subjects))
            gateways[profile] = Gateway(profile, url, proc, tokens)
        yield Stack(home, sim_url, gateways)
    finally:
        stop(*reversed(procs))
        shutil.rmtree(home, ignore_errors=True)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(text: str, name: str) -> float:
    """One unlabelled sample out of a /metrics page (prometheus text format)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise LookupError(f"{name} is not in the metrics")
