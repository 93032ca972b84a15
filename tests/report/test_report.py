"""The transparency report from a real audit database, drawn by a real browser."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.report import add_report_parser, build_report
from tests.audit.records import T0
from tests.report.fixtures import DAY, write_day
from tests.report.png import decode
from tests.report.test_svg import marks

NOW = T0 + 5 * DAY
N = 400
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    return await write_day(tmp_path / "home", NOW, N)


def charts(html: str) -> dict[str, str]:
    """aria-label -> the <svg> element's markup."""
    found = re.findall(r'(<svg class="chart[^"]*"[^>]*aria-label="([^"]*)".*?</svg>)', html)
    return {label: svg for svg, label in found}


def test_report_is_self_contained_and_charts_carry_the_numbers(db: Path) -> None:
    html = build_report(db, NOW - DAY, NOW, NOW)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "Hash chain intact: 400 records" in html
    found = charts(html)
    assert len(found) == 10 and not any("chart-empty" in svg for svg in found.values())
    by_tier = marks(found["Requests by tier over time"])
    assert sum(int(m["data-value"]) for m in by_tier) == N
    assert {m["data-series"] for m in by_tier} == {"public", "research", "internal"}
    reasons = {m["data-label"]: int(m["data-value"]) for m in marks(found["Refusal reasons"])}
    blocked = sum(1 for i in range(1, N + 1) if i % 7 and i % 11 == 0)
    assert reasons["block (cyber)"] == blocked
    limits = {m["data-label"]: int(m["data-value"]) for m in marks(found["Limit refusals by kind"])}
    assert sum(limits.values()) == N // 7
    coverage = [float(m["data-value"]) for m in marks(found["Watermark coverage by tier"])]
    assert len(coverage) == 3 and all(0.6 < c < 0.9 for c in coverage)
    # The period filter: half the day holds half the records.
    half = build_report(db, NOW - DAY / 2, NOW, NOW)
    half_marks = marks(charts(half)["Requests by tier over time"])
    assert sum(int(m["data-value"]) for m in half_marks) == N // 2


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.run(args)
    return code


def test_cli_writes_the_file_and_rejects_bad_periods(db: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "report.html"
    until = str(NOW)
    assert _cli("report", "--db", str(db), "--since", str(NOW - DAY), "--until", until,
                "--out", str(out)) == 0
    assert "<svg" in out.read_text() and "wrote" in capsys.readouterr().out
    assert _cli("report", "--db", str(db), "--since", "soon", "--out", str(out)) == 2
    assert _cli("report", "--db", str(db), "--since", until, "--until", until,
                "--out", str(out)) == 2
    assert _cli("report", "--db", str(tmp_path / "none.db"), "--out", str(out)) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(("since", "until"), [
    ("1h", "2h"),  # both count back from now: since is after until
    ("1h", "1h"),  # an empty period
    ("24h", str(NOW)),  # a duration is never counted back from --until
    (str(NOW), str(NOW - DAY)),
])
def test_cli_names_both_ends_of_an_empty_or_inverted_period(
        db: Path, tmp_path: Path, since: str, until: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--since", since, "--until", until,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--since {since} (" in err and f"is not before --until {until} (" in err
    assert err.count("\n") == 1 and not out.exists()


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1":
        pytest.fail("GATEWAY_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium)")
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium); "
                "set GATEWAY_REQUIRE_BROWSER=1 to make this a failure")


def test_chromium_draws_the_charts(db: Path, tmp_path: Path) -> None:
    browser = _browser()
    page = tmp_path / "report.html"
    page.write_text(build_report(db, NOW - DAY, NOW, NOW), encoding="utf-8")
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,2000", page.as_uri()],
        check=True, capture_output=True, timeout=90)
    image = decode(shot.read_bytes())
    assert (image.width, image.height) == (1200, 2000)
    assert image.ink_share() > 0.05, "the page rendered (almost) blank"
    # Bars and lines drew in the chart palette, not just text.
    assert image.count_colour("#0072B2") > 20_000
    assert image.count_colour("#E69F00") > 5_000
    assert image.count_colour("#009E73") > 2_000
