"""`gateway watermark detect|verify`, through the parsers the CLI registers."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.audit.record import AuditKeys
from gateway.cli import main
from gateway.pipeline.watermark import fingerprint as fp
from gateway.pipeline.watermark.cli import NOT_CHECKED, add_watermark_parsers
from gateway.pipeline.watermark.ledger import Ledger, Record
from gateway.pipeline.watermark.payload import key_id
from gateway.pipeline.watermark.provenance import sign_provenance
from tests.conftest import MODEL, Server
from tests.pipeline.watermark.helpers import KID, MARK, PROSE, REQUEST_ID, SECRET, run_filter


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
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(PROSE[50:600].encode())))
    assert run(["watermark", "detect", "-", "--home", str(home)]) == 0
    assert orjson.loads(capsys.readouterr().out)["result"] == "ledger"


def test_detect_refuses_a_named_ledger_that_is_not_there(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped --ledger ran without any ledger and exited 0 (found by a black-box
    check): the investigator read "no match" where the ledger was never asked."""
    (home / "leak.txt").write_text(PROSE, encoding="utf-8")
    missing = home / "ledgr.sqlite3"
    assert run(["watermark", "detect", str(home / "leak.txt"), "--home", str(home),
                "--ledger", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"no ledger at {missing}" in captured.err
    assert not missing.exists()  # not created empty either


def test_key_id_names_the_subjects_detect_reports(
        home: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """detect names a key id, which nothing turned back into a subject (found by a
    black-box check): the investigator can now hash the identity provider's subjects."""
    monkeypatch.delenv("GATEWAY_SECRET_AUDIT", raising=False)
    (home / "secrets" / "audit").write_bytes(b"a" * 32)
    monkeypatch.setattr("sys.stdin", io.StringIO("bob\n\n  carol \n"))
    assert run(["watermark", "key-id", "alice", "-", "--home", str(home)]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["sub"] for line in lines] == ["alice", "bob", "carol"]
    assert lines[0]["key_id"] == key_id(SECRET, "alice")
    assert lines[0]["audit_key_id"] == AuditKeys(b"a" * 32).key_id("alice")
    assert len({line["key_id"] for line in lines}) == 3
    (home / "secrets" / "audit").unlink()  # never created here: it would match nothing
    with pytest.raises(SystemExit, match="no audit secret"):
        run(["watermark", "key-id", "alice", "--home", str(home)])
    assert not (home / "secrets" / "audit").exists()


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


def test_verify_never_says_valid_for_a_text_a_streamed_header_cannot_check(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # QA round 4b: a streamed response's header (no content hash) printed "valid": true
    # and exited 0 beside any text at all.
    value = sign_provenance(SECRET, REQUEST_ID, KID, 1_700_000_000)  # a streamed response
    assert main(["watermark", "verify", "--home", str(home), "--header", value,
                 "--text", "anything"]) == NOT_CHECKED == 3
    out, err = capsys.readouterr()
    result = orjson.loads(out)
    assert result["valid"] is False and result["signature"] == "valid"
    assert result["content"] == "not_checked" and "not checked" in result["error"]
    assert "text was not checked" in err
    # The header alone still verifies, and a bad signature is still 1, text or not.
    assert main(["watermark", "verify", "--home", str(home), "--header", value]) == 0
    assert orjson.loads(capsys.readouterr().out)["content"] == "not_given"
    assert main(["watermark", "verify", "--home", str(home), "--header", value + "x",
                 "--text", "anything"]) == 1
    assert orjson.loads(capsys.readouterr().out)["signature"] == "invalid"


def test_verify_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["watermark", "verify", "--help"])
    assert "3 the signature is valid but the header has no content hash" in " ".join(
        capsys.readouterr().out.split())


@pytest.mark.parametrize("what", ["binary", "missing", "directory"])
def test_detect_input_errors_are_one_line(home: Path, what: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # QA round 4b: each of these printed a traceback.
    (home / "bin.dat").write_bytes(bytes(range(256)))
    path = {"binary": home / "bin.dat", "missing": home / "nosuch.txt",
            "directory": home / "secrets"}[what]
    assert main(["watermark", "detect", str(path), "--home", str(home)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert str(path) in captured.err and "Traceback" not in captured.err


def test_detect_refuses_binary_stdin(home: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe\x00 bytes")))
    assert main(["watermark", "detect", "-", "--home", str(home)]) == 2
    assert "stdin is not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["-1", "0", "two"])
def test_detect_limit_must_be_positive(home: Path, limit: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # QA round 4b: --limit -1 was accepted and dropped the last match.
    with pytest.raises(SystemExit) as exc:
        main(["watermark", "detect", "-", "--limit", limit, "--home", str(home)])
    assert exc.value.code == 2
    assert "--limit: must be a whole number of at least 1" in capsys.readouterr().err


def test_detect_limit_one_shows_one_match(home: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    (home / "leak.txt").write_text(PROSE, encoding="utf-8")
    assert main(["watermark", "detect", str(home / "leak.txt"), "--limit", "1",
                 "--home", str(home)]) == 0
    assert len(orjson.loads(capsys.readouterr().out)["ledger"]["matches"]) == 1


def test_detect_does_not_pin_a_copied_payload_on_its_key(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # MARK is the mark of KID's request REQUEST_ID, whose output (PROSE) is in the ledger.
    (home / "made_up.txt").write_text("I wrote this letter myself " + MARK + "and I sign it.",
                                      encoding="utf-8")
    assert main(["watermark", "detect", str(home / "made_up.txt"), "--home", str(home)]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["result"] == "payload_unconfirmed" and report["attribution"] is None
    assert report["payloads"][0]["ledger_check"]["status"] == "mismatch"


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
