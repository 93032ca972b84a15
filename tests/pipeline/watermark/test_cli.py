"""`gateway watermark detect|verify`, through the parsers the CLI registers."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.cli import main
from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.cli import add_watermark_parsers
from gateway.pipeline.watermark.ledger import Ledger, Record
from gateway.pipeline.watermark.provenance import sign_provenance
from tests.conftest import MODEL, Server
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
                "--text-file", str(home / "body.txt")]) == 0
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


def test_verify_text_is_the_text_not_a_file_name(home: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    marked, _ = run_filter(PROSE)  # longer than any file name may be
    for text in (marked, "short"):
        value = sign_provenance(SECRET, REQUEST_ID, KID, 1_700_000_000, [text])
        assert main(["watermark", "verify", "--home", str(home), "--header", value,
                     "--text", text]) == 0
        assert orjson.loads(capsys.readouterr().out)["valid"] is True
        assert main(["watermark", "verify", "--home", str(home), "--header", value,
                     "--text", text + "x"]) == 1
        assert "does not match" in orjson.loads(capsys.readouterr().out)["error"]


def test_verify_text_file_is_read_byte_for_byte(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text = "two lines\r\nand a trailing newline\n"
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1_700_000_000, [text, "second"])
    (home / "first.txt").write_bytes(text.encode())
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"second")))
    assert main(["watermark", "verify", "--home", str(home), "--header", value,
                 "--text-file", str(home / "first.txt"), "--text-file", "-"]) == 0
    assert orjson.loads(capsys.readouterr().out)["valid"] is True


@pytest.mark.parametrize(("argv", "message"), [
    (["--text-file", "missing.txt"], "cannot read --text-file"),
    (["--text-file", "latin1.txt"], "is not UTF-8"),
    (["--text-file", "-", "--text-file", "-"], "once"),
])
def test_verify_text_file_errors_are_usage_errors(
        home: Path, argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(home)
    (home / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1_700_000_000, ["x"])
    assert main(["watermark", "verify", "--home", str(home), "--header", value, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_verify_stdin_cannot_hold_header_and_text(home: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watermark", "verify", "--home", str(home), "--text-file", "-"]) == 2
    assert "pass --header" in capsys.readouterr().err


def test_verify_says_when_the_header_has_no_content_hash(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1_700_000_000)  # a streamed response
    assert main(["watermark", "verify", "--home", str(home), "--header", value,
                 "--text", "anything"]) == 0
    assert "text was not checked" in capsys.readouterr().err


async def test_verify_a_served_response_with_several_choices(
        gateway: Server, http: aiohttp.ClientSession, home: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    body = {"model": MODEL, "n": 3, "max_tokens": 30,
            "messages": [{"role": "user", "content": "Tell me about rivers"}]}
    async with http.post(gateway.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        value = resp.headers["x-gateway-provenance"]
        choices = (await resp.json())["choices"]
    texts = [c["message"]["content"] for c in sorted(choices, key=lambda c: c["index"])]
    assert len(set(texts)) == 3 and "h=" in value

    def verify(*order: str) -> bool:
        argv = [arg for text in order for arg in ("--text", text)]
        code = main(["watermark", "verify", "--home", str(home), "--header", value, *argv])
        result = orjson.loads(capsys.readouterr().out)
        assert code == (0 if result["valid"] else 1)
        return bool(result["valid"])

    assert verify(*texts)
    assert not verify(*reversed(texts))  # the order is the choices' order
    assert not verify(*texts[:2])  # every choice counts
    assert not verify("".join(texts))
