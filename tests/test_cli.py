"""The `gateway` command line's own commands (keys, token), run through `main`."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from gateway.cli import main
from gateway.devkeys import PRIVATE


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run an argv argparse must refuse; its error line."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert not out and "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize("where", ["file", "file/keys"])
def test_keys_generate_into_what_cannot_be_a_directory(
        tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a key\n")
    out = tmp_path / where
    assert main(["keys", "generate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"gateway keys generate: cannot write keys to {out}: Not a directory\n"
    assert (tmp_path / "file").read_text() == "not a key\n"


def test_keys_generate_out_must_name_a_directory(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    line = _usage_error(["keys", "generate", "--out", ""], capsys)
    assert "argument --out: needs a directory, not an empty string" in line
    assert not list(tmp_path.iterdir())


def test_keys_generate_never_replaces_a_key(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path)]) == 0
    before = (tmp_path / PRIVATE).read_bytes()
    assert main(["keys", "generate", "--out", str(tmp_path)]) == 1
    assert "already holds a signing key" in capsys.readouterr().err
    assert (tmp_path / PRIVATE).read_bytes() == before


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.setenv("GATEWAY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("ttl", ["0", "-60"])
def test_token_mint_refuses_a_token_expired_when_printed(
        home: Path, ttl: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage_error(["token", "mint", "--tier", "public", "--sub", "a", "--ttl", ttl],
                        capsys)
    assert f"argument --ttl: must be at least 1 second, not {int(ttl)}" in line


def test_token_mint_ttl(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "mint", "--tier", "public", "--sub", "a", "--ttl", "1"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1
    assert "not a whole number" in _usage_error(
        ["token", "mint", "--tier", "public", "--sub", "a", "--ttl", "1.5"], capsys)
