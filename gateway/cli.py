"""The `gateway` command line (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.settings import SettingsError, load_settings


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", type=Path, help="YAML config file (or GATEWAY_CONFIG)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080)")
    p.add_argument("--upstream", action="append", default=[], metavar="URL",
                   help="a vLLM base URL; repeat for several (or GATEWAY_UPSTREAM)")


def _sim_parser(sub: Any) -> None:
    p = sub.add_parser("sim", help="run the vLLM-compatible simulator alone")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", action="append", default=[], metavar="NAME")
    p.add_argument("--tokens-per-second", type=float, default=0.0)
    p.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.upstream:
        overrides["upstreams"] = args.upstream
    try:
        settings = load_settings(args.config, overrides=overrides)
    except SettingsError as exc:
        print(f"gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    from gateway.server import serve

    return asyncio.run(serve(settings))


def _run_sim(args: argparse.Namespace) -> int:
    from gateway.sim import SimSettings, run_sim

    _configure_logging("INFO")
    models = tuple(args.model) or SimSettings().models
    settings = SimSettings(models=models, ttft_s=args.ttft,
                           tokens_per_second=args.tokens_per_second)
    logging.getLogger("gateway.sim").info("simulating vLLM on http://%s:%d serving %s",
                                          args.host, args.port, ", ".join(models))
    asyncio.run(run_sim(settings, args.host, args.port))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _sim_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _run_serve(args)
        return _run_sim(args)
    except KeyboardInterrupt:
        return 130
