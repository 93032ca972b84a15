from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.audit.cli import add_audit_parser, default_db
from tests.audit.records import N_CHAIN as N
from tests.audit.records import tamper


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    code: int = args.run(args)
    return code


def test_cli_verify_exit_codes(chain_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert _cli("audit", "verify", "--db", str(chain_db)) == 0
    out = capsys.readouterr().out
    assert f"ok, {N} records" in out
    head = out.rsplit("head ", 1)[1].strip()
    tamper(chain_db, lambda c: c.execute("DELETE FROM audit WHERE seq = 4"))
    assert _cli("audit", "verify", "--db", str(chain_db)) == 1
    err = capsys.readouterr().err
    assert "BROKEN at record 5 (request req-5)" in err and "4 missing" in err
    assert _cli("audit", "verify", "--db", str(tmp_path / "none.sqlite3")) == 2
    assert "cannot read" in capsys.readouterr().err
    assert _cli("audit", "verify", "--db", str(chain_db), "--anchor", "bad") == 2
    # default location: GATEWAY_HOME/audit.sqlite3
    monkeypatch.setenv("GATEWAY_HOME", str(tmp_path))
    assert default_db() == chain_db == tmp_path / "audit.sqlite3"
    assert _cli("audit", "verify", "--anchor", head) == 1


def test_cli_verify_an_anchor_the_chain_lacks_says_what_did_verify(
        chain_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It said "BROKEN at record 4: …; N records before it verified, last good N:…"."""
    assert _cli("audit", "verify", "--db", str(chain_db)) == 0
    head = capsys.readouterr().out.rsplit("head ", 1)[1].strip()
    digest = head.partition(":")[2]
    verified = (f"the chain as it stands verifies ({N} records, head {head}) but is not the "
                "one the anchor was taken from")
    assert _cli("audit", "verify", "--db", str(chain_db), "--anchor", f"4:{digest}") == 1
    assert capsys.readouterr().err == (
        f"{chain_db}: BROKEN at record 4: record 4 differs from the anchor: history up to it "
        f"was rewritten; {verified}\n")
    assert _cli("audit", "verify", "--db", str(chain_db), "--anchor", f"{N + 5}:{digest}") == 1
    assert capsys.readouterr().err == (
        f"{chain_db}: BROKEN at record {N + 5}: anchor record {N + 5} is missing: the log was "
        f"cut after record {N}; {verified}\n")
