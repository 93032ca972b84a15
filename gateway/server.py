"""`gateway serve`: run the app, start the embedded simulator when needed, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import sys

from aiohttp import web

from gateway.app import create_app
from gateway.context import LIFECYCLE, RELOADER
from gateway.lifecycle import StartupError
from gateway.protocol import GatewayRunner
from gateway.settings import Settings
from gateway.sim import SimSettings, create_sim_app

log = logging.getLogger("gateway")


async def start_embedded_sim(settings: Settings) -> tuple[web.AppRunner, str]:
    sim = SimSettings(models=settings.sim.models, ttft_s=settings.sim.ttft_s,
                      tokens_per_second=settings.sim.tokens_per_second)
    runner = web.AppRunner(create_sim_app(sim), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _banner(settings: Settings, host: str, port: int) -> str:
    base = f"http://{host}:{port}"
    model = settings.sim.models[0] if settings.embedded_sim else "MODEL"
    home = f"GATEWAY_HOME={settings.home} " if str(settings.home) != ".gateway" else ""
    # `token mint` signs with the dev key: useful only while the gateway trusts it.
    token = f"""  get a development token (signed by the dev key under {settings.home}/keys):
    export TOKEN=$({home}.venv/bin/gateway token mint --tier public --sub you)
""" if settings.auth.uses_dev_keys else """  with a token from your identity provider in $TOKEN
"""
    return f"""gateway ready on {base}
{token}  try it:
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


async def serve(settings: Settings) -> int:
    sim_runner = None
    if settings.embedded_sim:
        sim_runner, url = await start_embedded_sim(settings)
        log.info("no upstream configured: serving the built-in vLLM simulator at %s "
                 "(embedded default; pass --upstream URL to front real vLLM)", url)
        settings = dataclasses.replace(settings, upstreams=(url,))
    app = create_app(settings)
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=1.0)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, backlog=2048)
        await site.start()
    except (StartupError, OSError) as exc:  # a store that cannot open, a port in use
        print(f"gateway: cannot start: {exc}", file=sys.stderr, flush=True)
        await runner.cleanup()
        if sim_runner is not None:
            await sim_runner.cleanup()
        return 1
    host, port = runner.addresses[0][:2]
    log.info("fronting %s", ", ".join(settings.upstreams))
    print(_banner(settings, host, port), flush=True)
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

    log.info("shutting down: draining up to %.0fs", settings.drain_timeout_s)
    drained = await app[LIFECYCLE].drain(settings.drain_timeout_s)
    if not drained:
        log.warning("drain timeout: ending %d open requests", app[LIFECYCLE].in_flight)
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
