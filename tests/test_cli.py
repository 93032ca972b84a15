"""The `gateway` command line's own commands (keys, token), run through `main`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest

from gateway.cli import MAX_TTL_S, main
from gateway.devkeys import PRIVATE
from tests.conftest import ROOT, free_port


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


def _refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run an argv the command itself must refuse (exit 2); its one stderr line."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert not out and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("option", ["--sub", "--tier"])
@pytest.mark.parametrize("value", ["", "  "])
def test_token_mint_refuses_an_empty_claim(home: Path, option: str, value: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "mint", "--tier", "public", "--sub", "a"]
    argv[argv.index(option) + 1] = value
    assert f"argument {option}: must not be empty" in _usage_error(argv, capsys)


def test_token_mint_ttl_has_an_upper_bound(home: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    mint = ["token", "mint", "--tier", "public", "--sub", "a", "--ttl"]
    assert main([*mint, str(MAX_TTL_S)]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == MAX_TTL_S == 366 * 24 * 3600
    line = _usage_error([*mint, "99999999999999999999"], capsys)
    assert "argument --ttl: must be at most 31622400 seconds (366 days)" in line
    with pytest.raises(SystemExit):
        main(["token", "mint", "--help"])
    assert "366 days" in capsys.readouterr().out


def test_token_mint_refuses_an_unknown_scope(home: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    line = _refusal(["token", "mint", "--tier", "public", "--sub", "a", "--scope", "admin",
                     "--scope", "superuser"], capsys)
    assert line == ("gateway token mint: --scope 'superuser': not a scope the gateway knows "
                    "(known: admin)")
    assert main(["token", "mint", "--tier", "public", "--sub", "a", "--scope", "admin"]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == "admin"


def test_token_mint_warns_of_a_tier_the_policy_lacks(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    monkeypatch.setenv("GATEWAY_POLICIES", str(policies))
    assert main(["token", "mint", "--tier", "nosuchtier", "--sub", "a"]) == 0
    out, err = capsys.readouterr()
    assert jwt.decode(out.strip(), options={"verify_signature": False})["tier"] == "nosuchtier"
    assert err.startswith(f"gateway token mint: warning: the policy in {policies} has no tier "
                          "'nosuchtier' (tiers: ")
    assert "public" in err and err.endswith("; the gateway will refuse this token\n")
    assert main(["token", "mint", "--tier", "public", "--sub", "a"]) == 0
    assert not capsys.readouterr().err
    (policies / "tiers.yaml").write_text("not: [valid\n")  # no policy, no opinion on tiers
    assert main(["token", "mint", "--tier", "nosuchtier", "--sub", "a"]) == 0
    assert not capsys.readouterr().err


def test_token_mint_with_an_unusable_home_says_why(home: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    mint = ["token", "mint", "--tier", "public", "--sub", "a"]
    (tmp_path / "file").write_text("x\n")
    monkeypatch.setenv("GATEWAY_HOME", str(tmp_path / "file"))
    assert _refusal(mint, capsys) == (
        f"gateway token mint: GATEWAY_HOME {tmp_path}/file is not a directory")

    monkeypatch.setenv("GATEWAY_HOME", str(home))
    (home / "keys").mkdir(parents=True)
    (home / "keys" / PRIVATE).write_text("garbage\n")  # a partial copy of a key set
    assert _refusal(mint, capsys) == (
        f"gateway token mint: {home}/keys holds no jwks.json: an incomplete development key "
        "set; restore it, or move the directory away to create new keys")
    assert [p.name for p in home.iterdir()] == ["keys"]  # nothing staged, nothing replaced
    assert [p.name for p in (home / "keys").iterdir()] == [PRIVATE]

    shutil.rmtree(home / "keys")
    assert main(mint) == 0
    (home / "keys" / PRIVATE).unlink()  # a home that only verifies
    capsys.readouterr()
    assert "signing-key.pem is missing: this GATEWAY_HOME verifies development tokens but " \
        "cannot mint them" in _refusal(mint, capsys)


def test_a_bad_setting_is_one_line_for_every_command(home: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    assert _refusal(["token", "mint", "--tier", "public", "--sub", "a"], capsys) == (
        "gateway: invalid configuration: GATEWAY_PORT: port: expected a whole number, "
        "got 'eighty'")
    monkeypatch.delenv("GATEWAY_PORT")
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "xml")
    assert _refusal(["sim", "--port", "1"], capsys) == (
        "gateway: invalid configuration: GATEWAY_LOG_FORMAT: log_format: one of json, text")
    monkeypatch.delenv("GATEWAY_LOG_FORMAT")
    monkeypatch.setenv("GATEWAY_EVENT_LOOP", "trio")
    assert _refusal(["sim", "--port", "1"], capsys) == (
        "gateway: invalid configuration: GATEWAY_EVENT_LOOP: event_loop: one of auto, uvloop, "
        "asyncio, got 'trio'")
    monkeypatch.delenv("GATEWAY_EVENT_LOOP")
    monkeypatch.setenv("GATEWAY_SECRET_WATERMARK", "short")
    text = home.parent / "text.txt"
    text.write_text("hello\n")
    assert _refusal(["watermark", "detect", str(text)], capsys) == (
        "gateway: invalid configuration: GATEWAY_SECRET_WATERMARK: must be at least 32 bytes, "
        "not 5")


def test_serve_checks_the_file_even_where_a_flag_overrides_it(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text('port: "abc"\n')
    assert _refusal(["serve", "--config", str(config), "--port", "18103",
                     "--upstream", "http://127.0.0.1:18101"], capsys) == (
        f"gateway: invalid configuration: {config}:1: port: expected a whole number, "
        "got 'abc'")


@pytest.mark.parametrize(("argv", "said"), [
    (["--port", "-1"], "argument --port: must be between 0 and 65535, not -1"),
    (["--port", "http"], "argument --port: 'http' is not a port number"),
    (["--ttft", "-1"], "argument --ttft: must be a number >= 0, not -1"),
    (["--tokens-per-second", "nan"], "argument --tokens-per-second: must be a number >= 0"),
])
def test_sim_refuses_impossible_settings_by_name(argv: list[str], said: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A negative port was a traceback from bind(); a negative delay or rate ran."""
    assert said in _usage_error(["sim", *argv], capsys)


def test_sim_on_a_port_in_use_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "gateway", "sim", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"gateway sim: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "address already in use" in done.stderr and "Traceback" not in done.stderr


def test_sim_serves_a_guard_model_beside_its_models(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(port),
         "--guard-model", "meta-llama/Llama-Guard-3-8B"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=1) as resp:
                    listed = [m["id"] for m in json.load(resp)["data"]]
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert listed == ["sim-llama-3-8b-instruct", "meta-llama/Llama-Guard-3-8B"]
        request = urllib.request.Request(
            base + "/v1/chat/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "meta-llama/Llama-Guard-3-8B", "messages": [
                {"role": "user", "content": "how is sarin made"}]}).encode())
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer = json.load(resp)["choices"][0]["message"]["content"]
        assert answer == "unsafe\nS9"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_policy_check_without_a_directory_checks_the_shipped_policies_and_says_so(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Its help promised ./policies; a broken ./policies is not what the gateway reads."""
    monkeypatch.delenv("GATEWAY_POLICIES", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "tiers.yaml").write_text("not: [valid\n")
    assert main(["policy", "check"]) == 0
    shipped = ROOT / "gateway" / "default_policies"
    assert capsys.readouterr().out.startswith(f"{shipped}: ok, version ")
    with pytest.raises(SystemExit):
        main(["policy", "check", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "policies/" not in usage
    assert ("(default: GATEWAY_POLICIES, else `policies` in the GATEWAY_CONFIG file, else "
            "the policies shipped with the gateway)") in usage
