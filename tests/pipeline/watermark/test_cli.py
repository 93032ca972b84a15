"""`gateway watermark detect|verify`, through the parsers the CLI registers."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import orjson
import pytest

from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.cli import add_watermark_parsers
from gateway.pipeline.watermark.ledger import Ledger, Record
from gateway.pipeline.watermark.provenance import sign_provenance
from tests.pipeline.watermark.helpers import KID, PROSE, REQUEST_ID, SECRET, run_filter


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gateway")
    add_watermark_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("GATEWAY_SECRET_WATERMARK", raising=False)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "watermark").write_bytes(SECRET)
    led = Ledger.sqlite(tmp_path / "ledger.sqlite3")
    led.open()
    led.write([Record(REQUEST_ID, KID, "public", "m", 1.75e9, "v1",
                      tuple(fp.word_hashes(PROSE)))])
    led.store.close()
    return tmp_path


def test_detect_reads_a_file_and_reports_json(home: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    marked, _ = run_filter(PROSE)
    (home / "leak.txt").write_text(marked, encoding="utf-8")
    assert run(["watermark", "detect", str(home / "leak.txt"), "--home", str(home)]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["result"] == "payload" and report["attribution"]["key_id"] == KID
    assert report["ledger"]["matches"][0]["request_id"] == REQUEST_ID


def test_detect_reads_stdin(home: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PROSE[50:600]))
    assert run(["watermark", "detect", "-", "--home", str(home)]) == 0
    assert orjson.loads(capsys.readouterr().out)["result"] == "ledger"


def test_verify_checks_the_header(home: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1_700_000_000, [PROSE])
    (home / "body.txt").write_text(PROSE, encoding="utf-8")
    assert run(["watermark", "verify", "--header", value, "--home", str(home),
                "--text", str(home / "body.txt")]) == 0
    assert orjson.loads(capsys.readouterr().out)["valid"] is True
    monkeypatch.setattr("sys.stdin", io.StringIO("x-gateway-provenance: " + value + "x\n"))
    assert run(["watermark", "verify", "--home", str(home)]) == 1
    assert orjson.loads(capsys.readouterr().out)["valid"] is False


def test_no_secret_is_an_error_not_a_new_secret(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_SECRET_WATERMARK", raising=False)
    with pytest.raises(SystemExit, match="no watermark secret"):
        run(["watermark", "verify", "--header", "v=1", "--home", str(tmp_path)])
    assert not (tmp_path / "secrets").exists()
