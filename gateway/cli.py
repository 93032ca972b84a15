"""The `gateway` command line (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import eventloop
from gateway.audit.cli import add_audit_parser
from gateway.pipeline.classify.eval import add_eval_parser, run_eval
from gateway.pipeline.watermark.cli import add_watermark_parsers, run_watermark
from gateway.report import add_report_parser
from gateway.secret_store import SecretError
from gateway.settings import LOG_FORMATS, SettingsError, load_settings

MAX_TTL_S = 366 * 24 * 3600  # a typo must not mint a credential that never expires


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
    p.add_argument("--port", type=_port, default=8000, help="0: any free port")
    p.add_argument("--model", action="append", default=[], metavar="NAME")
    p.add_argument("--guard-model", action="append", default=[], metavar="NAME",
                   help="also serve NAME as a Llama Guard 3 model; repeatable (docs/guard.md)")
    p.add_argument("--tokens-per-second", type=_not_negative, default=0.0,
                   help="0: as fast as it can")
    p.add_argument("--ttft", type=_not_negative, default=0.0,
                   help="seconds before the first token")
    p.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY") or None,
                   help="as vLLM's: /v1 paths need `Authorization: Bearer KEY` "
                        "(or VLLM_API_KEY)")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {value}")
    return value


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):  # nan fails too
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


# As the gateway resolves it (settings.py): never ./policies, which only a checkout has.
_POLICY_DEFAULT = ("default: GATEWAY_POLICIES, else `policies` in the GATEWAY_CONFIG file, "
                   "else the policies shipped with the gateway")


def _policy_parser(sub: Any) -> None:
    p = sub.add_parser("policy", help="validate or dry-run the policy files")
    cmds = p.add_subparsers(dest="policy_command", required=True)
    check = cmds.add_parser("check", help="validate policy files; file:line: message per error")
    check.add_argument("directory", nargs="?", type=Path,
                       help=f"policy directory ({_POLICY_DEFAULT})")
    explain = cmds.add_parser("explain", help="what would happen to a request, as JSON")
    explain.add_argument("--tier", required=True)
    explain.add_argument("--body", required=True, type=Path, help="request body JSON file or -")
    explain.add_argument("--policies", type=Path, help=f"policy directory ({_POLICY_DEFAULT})")


def _policy_dir(explicit: Path | None) -> Path:
    return explicit or load_settings(overrides={}).policies


def _run_policy(args: argparse.Namespace) -> int:
    from gateway.policy.loader import PolicyError, load_policy

    if args.policy_command == "check":
        directory = _policy_dir(args.directory)
        try:
            policy = load_policy(directory)
        except PolicyError as exc:
            for error in exc.errors:
                print(error, file=sys.stderr)
            return 1
        print(f"{directory}: ok, version {policy.version}, tiers: {', '.join(policy.tiers)}")
        return 0
    return _run_explain(args, load_policy, PolicyError)


def _run_explain(args: argparse.Namespace, load_policy: Any, policy_error: Any) -> int:
    import orjson

    from gateway.policy.explain import explain_classified

    try:
        policy = load_policy(_policy_dir(args.policies))
    except policy_error as exc:
        print(str(exc), file=sys.stderr)
        return 1
    try:
        raw = sys.stdin.buffer.read() if str(args.body) == "-" else args.body.read_bytes()
    except OSError as exc:
        print(f"{args.body}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        print(f"{args.body}: not valid JSON: {exc}", file=sys.stderr)
        return 1
    if not isinstance(body, dict):
        print(f"{args.body}: expected a JSON object", file=sys.stderr)
        return 1
    report = asyncio.run(explain_classified(policy, args.tier, body))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


def _directory(text: str) -> Path:
    # Path("") is ".", which would put the keys wherever the command happened to run.
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a directory, not an empty string")
    return Path(text)


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, not {value}: "
                                         "the token would be expired when printed")
    if value > MAX_TTL_S:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TTL_S} seconds (366 days), "
                                         f"not {value}")
    return value


def _claim(text: str) -> str:
    # The gateway refuses a token whose sub or tier is empty.
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _keys_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="development signing keys")
    cmds = p.add_subparsers(dest="keys_command", required=True)
    gen = cmds.add_parser("generate", help="an Ed25519 keypair and its JWKS document")
    gen.add_argument("--out", required=True, type=_directory, metavar="DIR",
                     help="directory for the keys, created if missing; "
                     "an existing signing key there is never replaced")


def _token_parser(sub: Any) -> None:
    p = sub.add_parser("token", help="development tokens")
    cmds = p.add_subparsers(dest="token_command", required=True)
    mint = cmds.add_parser("mint", help="print a JWT the default configuration accepts")
    mint.add_argument("--tier", required=True, type=_claim,
                      help="a tier of the policy (a warning if the policy has no such tier)")
    mint.add_argument("--sub", required=True, type=_claim, help="the caller's id")
    mint.add_argument("--ttl", type=_seconds, default=3600,
                      help=f"lifetime in seconds, from 1 to {MAX_TTL_S} (366 days); "
                      "default 3600")
    mint.add_argument("--org")
    mint.add_argument("--scope", action="append", default=[],
                      help="a scope the gateway knows (admin); repeatable")


def _run_keys(args: argparse.Namespace) -> int:
    from gateway.devkeys import generate_keys

    try:
        jwks = generate_keys(args.out)
    except FileExistsError:
        print(f"gateway: {args.out} already holds a signing key; not overwriting it",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gateway keys generate: cannot write keys to {args.out}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote signing key, public key and {jwks}")
    return 0


def _unknown_tier(tier: str, policies: Path) -> str | None:
    """A warning when the policy loads and has no such tier (the gateway answers 403)."""
    from gateway.policy.loader import PolicyError, load_policy

    try:
        policy = load_policy(policies)
    except PolicyError:
        return None  # `gateway policy check` is the place to report a broken policy
    if tier in policy.tiers:
        return None
    return (f"gateway token mint: warning: the policy in {policies} has no tier {tier!r} "
            f"(tiers: {', '.join(policy.tiers)}); the gateway will refuse this token")


def _run_token(args: argparse.Namespace) -> int:
    from gateway.admin import ADMIN_SCOPE
    from gateway.devkeys import DevKeyError, mint_token

    unknown = [scope for scope in args.scope if scope != ADMIN_SCOPE]
    if unknown:
        print(f"gateway token mint: --scope {unknown[0]!r}: not a scope the gateway knows "
              f"(known: {ADMIN_SCOPE})", file=sys.stderr)
        return 2
    settings = load_settings(overrides={})
    try:
        token = mint_token(settings.home, tier=args.tier, sub=args.sub, ttl=args.ttl,
                           org=args.org, scopes=tuple(args.scope),
                           tier_claim=settings.auth.tier_claim)
    except DevKeyError as exc:
        print(f"gateway token mint: {exc}", file=sys.stderr)
        return 2
    warning = _unknown_tier(args.tier, settings.policies)
    if warning is not None:
        print(warning, file=sys.stderr)
    print(token)
    return 0


def _configure_logging(level: str, log_format: str) -> None:
    from gateway.logs import configure_logging

    configure_logging(level, json=log_format.lower() != "text")


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
    _configure_logging(settings.log_level, settings.log_format)
    from gateway.server import serve

    return eventloop.run(serve(settings), settings.event_loop)


def _run_sim(args: argparse.Namespace) -> int:
    from gateway.sim import SimSettings, run_sim

    log_format = os.environ.get("GATEWAY_LOG_FORMAT") or "json"
    if log_format.lower() not in LOG_FORMATS:
        raise SettingsError(f"GATEWAY_LOG_FORMAT: log_format: one of {', '.join(LOG_FORMATS)}")
    _configure_logging("INFO", log_format)
    loop = os.environ.get("GATEWAY_EVENT_LOOP") or "auto"
    if (why := eventloop.check_event_loop(loop)) is not None:
        raise SettingsError(f"GATEWAY_EVENT_LOOP: event_loop: {why}")
    models = tuple(args.model) or SimSettings().models
    settings = SimSettings(models=models, ttft_s=args.ttft,
                           tokens_per_second=args.tokens_per_second,
                           guard_models=tuple(args.guard_model), api_key=args.api_key)
    logging.getLogger("gateway.sim").info("simulating vLLM on http://%s:%d serving %s",
                                          args.host, args.port, ", ".join(settings.served))
    try:
        eventloop.run(run_sim(settings, args.host, args.port), loop)
    except OSError as exc:  # the port is taken, the host is not ours: one line, no trace
        print(f"gateway sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _sim_parser(sub)
    _policy_parser(sub)
    _keys_parser(sub)
    _token_parser(sub)
    add_audit_parser(sub)
    add_report_parser(sub)
    add_watermark_parsers(sub)
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    commands = {"serve": _run_serve, "sim": _run_sim, "policy": _run_policy,
                "keys": _run_keys, "token": _run_token, "watermark": run_watermark,
                "eval": run_eval}
    try:
        if hasattr(args, "run"):
            return int(args.run(args))
        return commands[args.command](args)
    except (SettingsError, SecretError) as exc:  # e.g. `token mint` with a bad GATEWAY_*
        print(f"gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
