"""Soak, briefly: bench/soak.py runs as a subprocess against a real simulator and a
real gateway with every stage on, and must end with no errors, no growth of descriptors
or tasks and nothing left open once its clients have gone.

Half a minute catches leaks of tasks and descriptors (they grow with every request) and
crashes under concurrent streams; a slow memory leak needs the minutes of `make soak`.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import soak  # bench/ holds scripts, not a package: imported by path


@pytest.mark.timeout(150)
def test_a_short_soak_shows_no_errors_and_no_growth() -> None:
    command = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.5",
               "--streams", "30", "--tps", "8", "--stream-tokens", "24", "--rate", "5",
               "--sample-s", "2", "--warmup-s", "10", "--settle-s", "2",
               # Caches still fill in the first minute: memory is bounded loosely here.
               "--max-rss-slope", "120", "--max-fd-slope", "30", "--max-task-slope", "60",
               "--max-task-residue", "5"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=140, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "soak: ok" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines()
            if line.strip()[:1].isdigit() and len(line.split()) == 7]
    assert len(rows) >= 10, done.stdout  # one sample every 2 s over 30 s
    assert all(float(row[5]) > 0 for row in rows), done.stdout  # requests kept completing
    assert max(int(row[4]) for row in rows) == 30, done.stdout  # all streams were held
    # The gateway's task gauge sees them: at least one handler task per open stream.
    assert all(int(row[3]) >= int(row[4]) for row in rows), done.stdout
    assert time.monotonic() - started < 140


def _samples(rss: list[float], tasks: list[int]) -> list[soak.Sample]:
    return [soak.Sample(t=5.0 * i, rss_mib=r, fds=40, tasks=n, streams=30, rps=10, errors=0)
            for i, (r, n) in enumerate(zip(rss, tasks, strict=True))]


def test_growth_after_the_warm_up_fails_the_soak() -> None:
    bounds = soak.Bounds(rss_mib=2, fds=5, tasks=10)
    steady = _samples([400, 430, 431, 430, 431, 430, 431], [80, 95, 81, 88, 84, 90, 82])
    assert soak.growth_problems(steady, warmup_s=5, bounds=bounds) == []

    leaking = _samples([400, 401, 402, 403, 404, 405, 406], [80, 85, 90, 95, 100, 105, 110])
    found = soak.growth_problems(leaking, warmup_s=5, bounds=bounds)
    assert [problem.split()[0] for problem in found] == ["rss_mib", "tasks"]
    assert "12.00/min" in found[0] and "60.00/min" in found[1]

    assert soak.growth_problems(leaking[:2], warmup_s=5, bounds=bounds) != []
