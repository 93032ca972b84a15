"""Real servers on loopback: the simulator plays vLLM, the gateway runs as it does in production."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.devkeys import mint_token
from gateway.settings import load_settings
from gateway.sim import SIM_STATS, SimSettings, SimStats, create_sim_app

pytest_plugins = ["tests.postgres"]  # the postgres_server / postgres_url fixtures

MODEL = "sim-llama-3-8b-instruct"
ROOT = Path(__file__).resolve().parent.parent


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item,
                                  ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked `both_loops` (code that handles transports itself) run on asyncio's
    loop and on uvloop, which `gateway serve` runs on (gateway/eventloop.py); with
    GATEWAY_TEST_LOOP=uvloop every test runs on uvloop."""
    if os.environ.get("GATEWAY_TEST_LOOP") == "uvloop":
        return {"uvloop": uvloop.new_event_loop}
    if item.get_closest_marker("both_loops"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@dataclass
class Server:
    url: str
    app: web.Application

    @property
    def stats(self) -> SimStats:
        return self.app[SIM_STATS]


async def _start(app: web.Application, runners: list[web.AppRunner], port: int = 0) -> str:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    runners.append(runner)
    host, bound = runner.addresses[0][:2]
    return f"http://{host}:{bound}"


async def fake_backend(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       runners: list[web.AppRunner]) -> str:
    """A backend of a test's own on loopback: `handler` answers every method and path."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await _start(app, runners)


@pytest.fixture
async def servers() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    yield runners
    for runner in reversed(runners):
        await runner.cleanup()


StartSim = Callable[..., Awaitable[Server]]
StartGateway = Callable[..., Awaitable[Server]]


@pytest.fixture
def start_sim(servers: list[web.AppRunner]) -> StartSim:
    async def start(port: int = 0, **settings: Any) -> Server:
        app = create_sim_app(SimSettings(**settings))
        return Server(await _start(app, servers, port), app)

    return start


FAST_HEALTH = {"interval_s": 0.1, "probe_timeout_s": 0.5, "failures_to_eject": 2,
               "eject_s": 0.3}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """GATEWAY_HOME for the test: dev keys, secrets, audit log and ledger."""
    return tmp_path / "home"


@pytest.fixture
def start_gateway(servers: list[web.AppRunner], home: Path) -> StartGateway:
    async def start(*upstreams: str, **overrides: Any) -> Server:
        overrides.setdefault("health", FAST_HEALTH)
        overrides.setdefault("home", str(home))
        settings = load_settings(env={}, overrides={"upstreams": list(upstreams), **overrides})
        app = create_app(settings, CollectorRegistry())
        return Server(await _start(app, servers), app)

    return start


@pytest.fixture
async def sim(start_sim: StartSim) -> Server:
    return await start_sim()


@pytest.fixture
async def gateway(start_gateway: StartGateway, sim: Server) -> Server:
    return await start_gateway(sim.url)


MintToken = Callable[..., str]


@pytest.fixture
def mint(home: Path) -> MintToken:
    """Tokens signed by the dev keys under the test's GATEWAY_HOME."""
    def mint(tier: str = "trusted", sub: str = "tester", scopes: tuple[str, ...] = ("admin",),
             **claims: Any) -> str:
        return mint_token(home, tier=tier, sub=sub, scopes=scopes, **claims)

    return mint


@pytest.fixture
def token(mint: MintToken) -> str:
    return mint()


@pytest.fixture
async def http(token: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that sends a valid admin token of the trusted tier."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        yield session


def edited_policies(tmp_path: Path, *edits: tuple[str, str],
                    file: str = "classifiers.yaml") -> str:
    """A copy of the shipped policies with exact text replacements in one file (each must
    match, so a test cannot silently stop editing what it meant to)."""
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    path = policies / file
    text = path.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    return str(policies)


async def counter_totals(url: str, name: str, by: str, **where: str) -> dict[str, float]:
    """A counter (`name`, without `_total`) from a live /metrics, summed by the label
    `by`, over the samples whose labels equal `where`."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == f"{name}_total" and all(
                    labels.get(k) == v for k, v in where.items()):
                counts[labels[by]] = counts.get(labels[by], 0.0) + sample.value
    return counts


async def requests_total(url: str, by: str, **where: str) -> dict[str, float]:
    """gateway_requests_total, summed by the label `by` (see counter_totals)."""
    return await counter_totals(url, "gateway_requests", by, **where)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def chat(content: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def model_list() -> web.Response:
    """A fake backend's /v1/models: MODEL alone."""
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


def chat_answer(content: str = "Hi.") -> web.Response:
    """A fake backend's non-streamed chat completion, as vLLM shapes it (7 + 2 tokens)."""
    return web.json_response({"id": "c", "object": "chat.completion", "model": MODEL,
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant",
                                                       "content": content}}],
                              "usage": {"prompt_tokens": 7, "completion_tokens": 2,
                                        "total_tokens": 9}})


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str

    def output(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.read()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """`gateway serve` as a real process, as `make run` starts it."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> Process:
        port = free_port()
        full_env = {**os.environ, "GATEWAY_HOME": str(tmp_path / "home"), **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), *args],
            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if ready:
            _wait_ready(url, proc)
        return Process(proc, url)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_ready(url: str, proc: subprocess.Popen[str]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited early with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError("gateway did not become ready")
