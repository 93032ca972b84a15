"""bench/watermark.py, smoke-run at toy size: both parts work end to end (a simulator and
two gateways as subprocesses, then the filters and a ledger directly), and the results
that must hold at any size hold here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--gateway-responses", "4", "--streams", "2", "--rounds", "1", "--tps", "500",
       "--responses", "6", "--ledger-extra", "20", "--human", "30", "--stride", "40",
       "--records", "200", "--chunks", "2"]


MUST_ALL_HIT = ("gateway payload round trip, streamed",
                "gateway payload round trip, not streamed",
                "gateway JSON mode (response_format): the original, no mark",
                "gateway with watermark off: no mark",
                "gateway detect, marks intact -> right key",
                "gateway detect, marks stripped -> right key",
                "streamed == non-streamed", "strip(marked) == original",
                "one genuine payload, right key",
                "excerpt attribution, marks intact -> payload",
                "excerpt attribution, marks stripped -> ledger")


def _hits(value: str) -> tuple[int, int]:
    hits, tried = value.split(" ")[0].split("/")
    return int(hits), int(tried)


def _run(args: list[str], timeout_s: float) -> tuple[int, str]:
    """The bench in a session of its own, so a time-out ends its gateways too."""
    proc = subprocess.Popen([sys.executable, "bench/watermark.py", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    return proc.returncode, output


@pytest.mark.timeout(240)  # two gateways start (each loads the classifier's model)
def test_bench_watermark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    code, output = _run([*TOY, "--json", str(out)], 220)
    assert code == 0, output[-4000:]
    results = json.loads(out.read_text())
    for label in MUST_ALL_HIT:
        hits, tried = _hits(results[label])
        assert tried > 0 and hits == tried, (label, results[label])
    assert results["payload round trip (all of the above)"] == "100.0%"
    assert results["responses with a mark in code/inline code/URL"].startswith("0/")
    assert _hits(results["false attribution (any source)"])[0] == 0
    assert "gap p50/p99" in results["the same with watermark on:"]
    assert "found)" in results["match() on 60-word excerpts of real records p50 / p99"]
