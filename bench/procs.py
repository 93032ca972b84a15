"""Shared by the bench scripts: start `gateway` subprocesses on free loopback ports, read
their CPU time and memory from /proc, and build policy copies for comparison runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    proc = subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(ready_url, timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"could not start: {' '.join(command)}")


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
