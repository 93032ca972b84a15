"""`gateway serve`: run the app, start the embedded simulator when needed, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import shlex
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway.app import create_app
from gateway.context import CLASSIFY, LIFECYCLE, METRICS, POOL, RELOADER
from gateway.devkeys import DevKeyError, ensure_dev_keys
from gateway.eventloop import running_loop_name
from gateway.lifecycle import Lifecycle, StartupError
from gateway.pipeline.auth.build import AuthConfigError, check_keys
from gateway.pipeline.auth.jwks import KeySetUnavailable
from gateway.policy.loader import PolicyError, load_policy
from gateway.protocol import GatewayRunner
from gateway.secret_store import SecretError
from gateway.settings import Settings, SettingsError
from gateway.sim import VLLM_KEEPALIVE_S, SimSettings, create_sim_app
from gateway.urls import redact

log = logging.getLogger("gateway")

# Settings that name something unusable (a missing key file, an unset secret, a broken
# policy): reported like a bad setting, exit 2 and no traceback. Anything else that
# escapes start-up is a bug and keeps its traceback.
_CONFIG_ERRORS = (SettingsError, AuthConfigError, KeySetUnavailable, DevKeyError, PolicyError,
                  SecretError)


async def start_embedded_sim(settings: Settings) -> tuple[web.AppRunner, str]:
    sim = SimSettings(models=settings.sim.models, ttft_s=settings.sim.ttft_s,
                      tokens_per_second=settings.sim.tokens_per_second)
    runner = web.AppRunner(create_sim_app(sim), access_log=None, handler_cancellation=True,
                           keepalive_timeout=VLLM_KEEPALIVE_S)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _preflight(settings: Settings) -> None:
    """What would otherwise fail only once the app starts, less clearly: the policy only
    after the embedding model has loaded (seconds), the key files as "no usable key", an
    unset HS256 secret or a host that does not resolve after the simulator has started."""
    auth = settings.auth
    if auth.uses_dev_keys:
        ensure_dev_keys(settings.home)
    jwks_file = auth.resolve(settings.home, auth.jwks_file) if auth.jwks_file else None
    if jwks_file is not None and not jwks_file.is_file():
        raise SettingsError(f"auth.jwks_file: {jwks_file}: no such file")
    check_keys(auth, settings.home)
    if not settings.policies.is_dir():
        raise SettingsError(f"policies: {settings.policies}: not a directory")
    load_policy(settings.policies)
    _resolve_host(settings.host, settings.port)


def _resolve_host(host: str, port: int) -> None:
    """The address to listen on, resolved as the listener will; OSError naming the setting
    (a bare "[Errno -2] Name or service not known" said neither what nor where)."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on host {host!r} (setting host, GATEWAY_HOST or "
                      f"--host): {exc.strerror}") from None


def _refuse(exc: Exception) -> int:
    """Print why start-up failed, in one line per problem; the exit status."""
    if isinstance(exc, PolicyError):
        lines = [f"invalid policy: {error}" for error in exc.errors]
    elif isinstance(exc, AuthConfigError):  # its message starts with the key under auth
        lines = [f"invalid configuration: auth.{exc}"]
    elif isinstance(exc, _CONFIG_ERRORS):
        lines = [f"invalid configuration: {exc}"]
    else:  # a store that cannot open, a port in use
        lines = [f"cannot start: {exc}"]
    for line in lines:
        print(f"gateway: {line}", file=sys.stderr, flush=True)
    return 2 if isinstance(exc, _CONFIG_ERRORS) else 1


def _gateway_command() -> str:
    """This installation's `gateway`, by absolute path: the hint works from any directory."""
    script = Path(sys.executable).parent / "gateway"
    if script.is_file():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m gateway"


def _not_ready(app: web.Application, settings: Settings) -> list[str]:
    """Why /readyz answers 503 now (its checks, in routes.readyz), for the banner."""
    reasons = []
    if settings.readiness_requires_upstream and not app[POOL].ready:
        upstreams = ", ".join(map(redact, settings.upstreams))
        reasons.append(f"no healthy upstream ({upstreams})")
    if not app[CLASSIFY].ready:
        reasons.append("the classifiers are still starting")
    return reasons


def _banner(settings: Settings, host: str, port: int, models: Sequence[str] = (),
            not_ready: Sequence[str] = ()) -> str:
    base = f"http://{host}:{port}"
    model = models[0] if models else "<model>"
    # Claim readiness only where /readyz does: a balancer would not send traffic yet.
    status = f"gateway ready on {base}\n" if not not_ready else (
        f"gateway listening on {base}, not ready yet: {'; '.join(not_ready)}\n"
        f"  GET {base}/readyz answers 503 until it is ready\n")
    home = shlex.quote(str(settings.home.absolute()))
    # `token mint` signs with the dev key: useful only while the gateway trusts it.
    token = f"""  get a development token (signed by the dev key under {home}/keys):
    export TOKEN=$(GATEWAY_HOME={home} {_gateway_command()} token mint --tier public --sub you)
""" if settings.auth.uses_dev_keys else """  with a token from your identity provider in $TOKEN
"""
    # No model reported yet (no upstream has answered): say where the ids come from.
    find_model = "" if models else f"""\
  find a model id for <model> (listed once an upstream answers):
    curl -s {base}/v1/models -H "Authorization: Bearer $TOKEN"
"""
    return f"""{status}{token}{find_model}  try it:
    curl -s {base}/v1/chat/completions -H "Authorization: Bearer $TOKEN" \\
      -H 'Content-Type: application/json' \\
      -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
  or with the openai SDK:
    import os
    from openai import OpenAI
    client = OpenAI(base_url="{base}/v1", api_key=os.environ["TOKEN"])
    print(client.chat.completions.create(model="{model}",
          messages=[{{"role": "user", "content": "Hello!"}}]).choices[0].message.content)
"""


async def _drain(lifecycle: Lifecycle, timeout_s: float, again: asyncio.Event) -> bool:
    """Wait for open requests up to the drain time, or until `again` is set (an operator's
    second Ctrl-C or SIGTERM): True when none is left."""
    waits = (asyncio.ensure_future(lifecycle.drain(timeout_s)),
             asyncio.ensure_future(again.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return lifecycle.in_flight == 0


async def serve(settings: Settings) -> int:
    try:
        _preflight(settings)
    except (OSError, *_CONFIG_ERRORS) as exc:
        return _refuse(exc)
    sim_runner = None
    if settings.embedded_sim:
        sim_runner, url = await start_embedded_sim(settings)
        log.info("no upstream configured: serving the built-in vLLM simulator at %s "
                 "(embedded default; pass --upstream URL to front real vLLM)", url)
        settings = dataclasses.replace(settings, upstreams=(url,))
    app = create_app(settings)
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=1.0,
                           header_timeout_s=settings.timeouts.client_header_s,
                           keepalive_timeout=settings.timeouts.client_idle_s,
                           send_timeout_s=settings.timeouts.client_send_s,
                           on_send_timeout=app[METRICS].client_send_timeouts.inc)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, backlog=2048)
        await site.start()
    except (StartupError, OSError, *_CONFIG_ERRORS) as exc:
        await runner.cleanup()
        if sim_runner is not None:
            await sim_runner.cleanup()
        return _refuse(exc)
    host, port = runner.addresses[0][:2]
    log.info("fronting %s (event loop: %s)", ", ".join(map(redact, settings.upstreams)),
             running_loop_name())
    # The pool has asked every upstream for its models once by now.
    models = list(app[POOL].models())
    if not models and sim_runner is not None:
        models = [settings.sim.models[0]]
    print(_banner(settings, host, port, models, _not_ready(app, settings)), flush=True)
    # Everything allocated so far (policy, model, libraries) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks it (150+ ms with
    # the embedding model loaded, on the request path of whichever request triggers it).
    gc.freeze()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app[RELOADER].reload_soon, "SIGHUP")
    await stop.wait()
    stop.clear()  # from here on, a second signal cuts the drain short

    log.info("shutting down: draining up to %.0fs (a second signal ends it now)",
             settings.drain_timeout_s)
    drained = await _drain(app[LIFECYCLE], settings.drain_timeout_s, stop)
    if not drained:
        log.warning("drain ended: ending %d open requests", app[LIFECYCLE].in_flight)
        # Open requests end as a 503 (streams: an error event) and are audited; what is
        # still left after the grace is cut off.
        left = await app[LIFECYCLE].cut(grace_s=2.0)
        if left:
            log.warning("drain timeout: cutting %d requests off", left)
    await runner.cleanup()
    if sim_runner is not None:
        await sim_runner.cleanup()
    log.info("stopped")
    return 0
