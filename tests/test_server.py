"""`gateway serve` as a real process: embedded default, config errors, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.devkeys import PRIVATE
from tests.conftest import Process, chat, free_port, requests_total


@pytest.mark.parametrize(("event_loop", "runs_on"), [("", "uvloop"), ("asyncio", "asyncio")])
async def test_embedded_default_says_so_and_answers(
        gateway_process: Callable[..., Process], token: str, event_loop: str,
        runs_on: str) -> None:
    gw = gateway_process(env={"GATEWAY_EVENT_LOOP": event_loop})
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.post(gw.url + "/v1/chat/completions", json=chat()) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"]
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=10) == 0
    output = gw.output()
    assert "built-in vLLM simulator" in output
    assert f"(event loop: {runs_on})" in output
    assert "curl -s " + gw.url + "/v1/chat/completions" in output
    assert "from openai import OpenAI" in output


def test_bad_config_fails_start_naming_key(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("port: 8080\ntimeouts:\n  ttfb: 3\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert f"{config}:3: timeouts.ttfb: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_store_that_cannot_open_stops_start_up_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = tmp_path / "gateway.yaml"
    config.write_text(f"port: 0\naudit:\n  path: {blocker}/audit.sqlite3\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "GATEWAY_HOME": str(tmp_path / "home")})
    assert result.returncode == 1
    assert f"cannot open the audit log at {blocker}/audit.sqlite3" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_drains_open_streams_then_exits_zero(
        gateway_process: Callable[..., Process], tmp_path: Path, token: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("drain_timeout_s: 20\nsim:\n  tokens_per_second: 20\n")
    gw = gateway_process("--config", str(config))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        streams = [await http.post(gw.url + "/v1/chat/completions",
                                   json=chat(stream=True, max_tokens=30)) for _ in range(5)]
        for resp in streams:
            await resp.content.readline()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with http.get(gw.url + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["accepting"] is False
        async with http.post(gw.url + "/v1/chat/completions", json=chat()) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "service_unavailable"
        # a rollout's refusals show (the open streams count when they end)
        statuses = await requests_total(gw.url, "status", route="/v1/chat/completions")
        assert statuses.get("503") == 1
        for resp in streams:
            raw = await resp.read()
            assert raw.endswith(b"data: [DONE]\n\n"), "stream finished in full"
            resp.close()
    assert await asyncio.to_thread(gw.proc.wait, 10) == 0


def _slow_gateway(gateway_process: Callable[..., Process], tmp_path: Path,
                  drain_s: float) -> Process:
    """`gateway serve` whose simulator writes 5 tokens a second: streams stay open."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"drain_timeout_s: {drain_s}\nsim:\n  tokens_per_second: 5\n")
    return gateway_process("--config", str(config))


async def _slow_stream(http: aiohttp.ClientSession, gw: Process) -> aiohttp.ClientResponse:
    """A stream of 500 tokens, open once its first event is in."""
    resp = await http.post(gw.url + "/v1/chat/completions",
                           json=chat(stream=True, max_tokens=500))
    await resp.content.readline()
    return resp


async def test_drain_timeout_ends_open_requests_with_a_503_and_exits(
        gateway_process: Callable[..., Process], tmp_path: Path, token: str) -> None:
    """Requests still open when the drain time runs out end as any failed request does:
    a stream with an error event the client can read, a waiting JSON request with a 503
    (both were cut off, the stream mid-chunk), audited and logged as the gateway's 503
    (the stream was recorded as 499, the client's doing)."""
    gw = _slow_gateway(gateway_process, tmp_path, drain_s=0.5)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        resp = await _slow_stream(http, gw)

        async def waiting() -> tuple[int, bytes]:
            async with http.post(gw.url + "/v1/chat/completions",
                                 json=chat("[[sim:ttft=30]] hi", max_tokens=2)) as answer:
                return answer.status, await answer.read()

        json_request = asyncio.create_task(waiting())
        await asyncio.sleep(0.3)  # the JSON request is waiting on the upstream
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        raw = await resp.read()  # a complete chunked body, not cut mid-chunk
        status, body = await json_request
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
        assert time.monotonic() - started < 5
        resp.close()
    assert b"[DONE]" not in raw
    last = orjson.loads(raw.strip().split(b"\n\n")[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "service_unavailable"
    assert status == 503 and orjson.loads(body)["error"]["code"] == "service_unavailable"
    request_lines = [orjson.loads(line) for line in gw.output().splitlines()
                     if line.startswith("{") and '"gateway.request"' in line]
    assert [r["status"] for r in request_lines] == [503, 503]


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_ends_the_drain_at_once(
        gateway_process: Callable[..., Process], tmp_path: Path, token: str,
        second: signal.Signals) -> None:
    """An operator's second Ctrl-C (or SIGTERM) was ignored: only SIGKILL stopped a drain
    of up to drain_timeout_s, and that skips the audit of what was open. Now it ends the
    drain as its time-out does: open requests end with a 503 and are recorded."""
    gw = _slow_gateway(gateway_process, tmp_path, drain_s=60)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        resp = await _slow_stream(http, gw)
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert gw.proc.poll() is None  # draining: the stream goes on
        started = time.monotonic()
        gw.proc.send_signal(second)
        raw = await resp.read()
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
        assert time.monotonic() - started < 5
        resp.close()
    last = orjson.loads(raw.strip().split(b"\n\n")[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "service_unavailable"


def test_the_banner_offers_a_dev_token_only_while_dev_keys_are_trusted(tmp_path: Path) -> None:
    """With the identity provider's keys configured, a dev token would only get 401."""
    from gateway.server import _banner
    from gateway.settings import load_settings

    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    dev = load_settings(env={}, overrides={"home": str(tmp_path)})
    assert "gateway token mint" in _banner(dev, "127.0.0.1", 8080)
    idp = load_settings(env={}, overrides={"home": str(tmp_path),
                                           "auth": {"jwks_file": str(jwks)}})
    banner = _banner(idp, "127.0.0.1", 8080)
    assert "token mint" not in banner and "identity provider" in banner


def _serve(tmp_path: Path, config: str | None, env: dict[str, str],
           *flags: str) -> subprocess.CompletedProcess[str]:
    """`gateway serve` that must not start; GATEWAY_* from env only."""
    args = [sys.executable, "-m", "gateway", "serve", "--port", "0", *flags]
    if config is not None:
        (tmp_path / "gateway.yaml").write_text(config)
        args += ["--config", str(tmp_path / "gateway.yaml")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**clean, "GATEWAY_HOME": str(tmp_path / "home"), **env})


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        ("auth: {jwks_file: /nonexistent.json}\n", {},
         "invalid configuration: auth.jwks_file: /nonexistent.json: no such file"),
        ("auth: {pem_files: [/nonexistent.pem]}\n", {},
         "invalid configuration: auth.pem_files.0: /nonexistent.pem: FileNotFoundError"),
        ("auth: {hs256_secret_env: QA_UNSET_SECRET}\n", {},
         "invalid configuration: auth.hs256_secret_env: environment variable QA_UNSET_SECRET "
         "must hold at least 32 bytes"),
        ("policies: /nonexistent\n", {},
         "invalid configuration: policies: /nonexistent: not a directory"),
        (None, {"GATEWAY_POLICIES": "/nonexistent"},
         "invalid configuration: policies: /nonexistent: not a directory"),
        (None, {"GATEWAY_REDIS_URL": "notaurl"},
         "invalid configuration: GATEWAY_REDIS_URL: redis_url: expected a redis://"),
        (None, {"GATEWAY_SECRET_WATERMARK": "short"},
         "invalid configuration: GATEWAY_SECRET_WATERMARK: must be at least 32 bytes, not 5"),
        (None, {"GATEWAY_UPSTREAM": ","},
         "invalid configuration: GATEWAY_UPSTREAM: upstreams: empty entry in ','"),
        (None, {"GATEWAY_UPSTREAM": ", "},
         "invalid configuration: GATEWAY_UPSTREAM: upstreams: empty entry in ', '"),
        (None, {"GATEWAY_LOG_FORMAT": "xml"},
         "invalid configuration: GATEWAY_LOG_FORMAT: log_format: one of json, text"),
    ],
)
def test_unusable_settings_stop_start_up_in_one_line(
        tmp_path: Path, config: str | None, env: dict[str, str], expected: str) -> None:
    """Each once ended in a traceback (or, for GATEWAY_UPSTREAM, in the simulator)."""
    flags = () if "GATEWAY_UPSTREAM" in env else ("--upstream", "http://127.0.0.1:9")
    result = _serve(tmp_path, config, env, *flags)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"gateway: {expected}"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "gateway ready" not in result.stdout


def test_a_broken_policy_stops_start_up_before_the_model_loads(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "tiers.yaml").write_text("tiers: [oops\n")
    result = _serve(tmp_path, None, {"GATEWAY_POLICIES": str(policies)},
                    "--upstream", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.startswith(f"gateway: invalid policy: {policies}/tiers.yaml:2:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "audit.sqlite3").exists()  # nothing was opened yet


@pytest.mark.parametrize("home_is", ["a file", "an incomplete key set"])
def test_an_unusable_home_stops_start_up_and_is_left_alone(tmp_path: Path,
                                                           home_is: str) -> None:
    home = tmp_path / "home"
    if home_is == "a file":
        home.write_text("x\n")
        expected = f"GATEWAY_HOME {home} is not a directory"
    else:
        (home / "keys").mkdir(parents=True)
        (home / "keys" / PRIVATE).write_text("garbage\n")
        expected = f"{home}/keys holds no jwks.json: an incomplete development key set"
    result = _serve(tmp_path, None, {}, "--upstream", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.startswith(f"gateway: invalid configuration: {expected}")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    if home_is == "a file":
        assert home.read_text() == "x\n"
    else:
        assert [p.name for p in home.iterdir()] == ["keys"]
        assert [p.name for p in (home / "keys").iterdir()] == [PRIVATE]
        assert (home / "keys" / PRIVATE).read_text() == "garbage\n"


async def _banner_lines(gw: Process) -> list[str]:
    """The gateway's stdout up to the banner's SDK snippet."""
    assert gw.proc.stdout is not None
    lines: list[str] = []
    while not lines or "from openai import OpenAI" not in lines[-1]:
        line = await asyncio.to_thread(gw.proc.stdout.readline)
        assert line, "the banner was printed"
        lines.append(line)
    return lines


async def test_the_banner_hint_works_from_any_directory(
        gateway_process: Callable[..., Process], tmp_path: Path) -> None:
    """The token command and the sample model in the banner, as a user would paste them."""
    gw = gateway_process()
    lines = await _banner_lines(gw)
    (hint,) = [line.strip() for line in lines if line.strip().startswith("export TOKEN=$(")]
    (model,) = set(re.findall(r'"model": "([^"]+)"', "".join(lines)))
    assert model == "sim-llama-3-8b-instruct"  # what the embedded simulator serves
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    shell = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", f'{hint} && printf %s "$TOKEN"'], cwd=elsewhere,
        env=clean, capture_output=True, text=True, timeout=30)
    assert shell.returncode == 0, shell.stderr
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {shell.stdout}"}) as \
            http, http.post(gw.url + "/v1/chat/completions",
                            json={"model": model, "messages": [{"role": "user",
                                                                "content": "Hello!"}]}) as resp:
        assert resp.status == 200, await resp.text()
    assert not list(elsewhere.iterdir())  # the token came from the gateway's own home


async def test_the_banner_claims_no_readiness_that_readyz_denies(
        gateway_process: Callable[..., Process]) -> None:
    """With no healthy upstream it said "gateway ready on …" beside a 503 from /readyz, and
    offered "<model>" with no word on where a model id comes from."""
    gw = gateway_process("--upstream", f"http://127.0.0.1:{free_port()}", ready=False)
    lines = await _banner_lines(gw)
    banner = "".join(line for line in lines if not line.startswith("{"))
    assert "gateway ready" not in banner
    assert banner.startswith(f"gateway listening on {gw.url}, not ready yet: no healthy "
                             "upstream (http://127.0.0.1:"), banner
    assert f"GET {gw.url}/readyz answers 503 until it is ready" in banner
    assert f'curl -s {gw.url}/v1/models -H "Authorization: Bearer $TOKEN"' in banner
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["checks"]["upstream"] is False


def test_an_unusable_auth_setting_stops_start_up_before_the_simulator(tmp_path: Path) -> None:
    """With no upstream, the simulator started (and said so) before the refusal."""
    result = _serve(tmp_path, "auth: {hs256_secret_env: QA_UNSET_SECRET}\n", {})
    assert result.returncode == 2
    assert result.stderr == (
        "gateway: invalid configuration: auth.hs256_secret_env: environment variable "
        "QA_UNSET_SECRET must hold at least 32 bytes\n")


def test_a_host_that_does_not_resolve_is_named_with_its_setting(tmp_path: Path) -> None:
    """It said "cannot start: [Errno -2] Name or service not known": neither what nor where."""
    result = _serve(tmp_path, None, {"GATEWAY_HOST": "999.1.1.1"},
                    "--upstream", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "gateway: cannot start: cannot listen on host '999.1.1.1' (setting host, GATEWAY_HOST "
        "or --host): "), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
