"""Typed, frozen settings: gateway.yaml, then GATEWAY_* environment, then CLI flags.

Validation happens here and only here; every error names the offending key (and the
file:line when it came from the YAML file), so a typo fails start-up loudly instead of
being silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.audit.log import AuditSettings
from gateway.audit.postgres import is_postgres_url
from gateway.eventloop import check_event_loop
from gateway.extras import installed
from gateway.pipeline.auth.settings import AuthSettings
from gateway.urls import redact as redact_url
from gateway.urls import same_upstream_key
from gateway.yamlfile import Located, YamlError, load_file

# The shipped policies: a link to the checkout's policies/ that a wheel carries as files,
# so an installed gateway starts on them too (a container points GATEWAY_POLICIES elsewhere).
_PROJECT_POLICIES = Path(__file__).resolve().parent / "default_policies"
LOG_FORMATS = ("json", "text")
# What redis.asyncio's from_url accepts; anything else fails only once the app starts.
_REDIS_SCHEMES = ("redis", "rediss", "unix")


class SettingsError(ValueError):
    """Configuration that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class TimeoutSettings:
    connect_s: float = 5.0
    # Until response headers arrive. vLLM sends non-streaming headers only after the
    # whole completion, so this also bounds a non-streaming generation.
    ttfb_s: float = 300.0
    idle_s: float = 60.0  # longest silence between two stream chunks
    # Longest a client may take to send its request body: a slow-loris upload holds a
    # connection and a task otherwise.
    client_body_s: float = 30.0
    # Longest a connection may take to send a whole request head (from its first byte, or
    # from opening), and how long a kept-alive connection may sit idle (protocol.py).
    client_header_s: float = 10.0
    client_idle_s: float = 75.0
    # Longest a client may accept nothing of a response once its send buffer is full: one
    # that stops reading holds a handler, buffers and a generation otherwise (protocol.py).
    client_send_s: float = 60.0


MIN_PROBE_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval_s: float = 5.0  # active /health probe and /v1/models refresh
    probe_timeout_s: float = 2.0
    # Consecutive failed probes before a backend that was up counts as down: one slow
    # answer from a busy backend must not take it out of service.
    failed_probes_to_down: int = 2
    failures_to_eject: int = 3  # consecutive passive failures before ejection
    eject_s: float = 10.0
    # When every backend serving a model is ejected, route among those the probe still
    # finds healthy instead of refusing everyone for eject_s (a few bad requests must not
    # take down the only backend).
    panic_routing: bool = True


@dataclass(frozen=True, slots=True)
class SimSettingsSpec:
    """The embedded simulator, started when no upstream is configured."""

    models: tuple[str, ...] = ("sim-llama-3-8b-instruct",)
    ttft_s: float = 0.0
    tokens_per_second: float = 0.0


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """The shared store is Redis when redis_url is set, else each process's memory."""

    on_store_error: str = "fail_closed"  # fail_closed | fail_open | local
    replicas: int = 1  # local mode divides each limit by this
    redis_timeout_s: float = 1.0  # longest wait on Redis per admission
    redis_prefix: str = "gw:rl:"


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """OpenTelemetry export (gateway/tracing.py); off unless an endpoint is set."""

    otlp_endpoint: str | None = None  # OTLP/HTTP collector, e.g. http://otel-collector:4318
    service_name: str = "gateway"
    timeout_s: float = 5.0  # per export batch

    def problems(self) -> list[str]:
        if self.otlp_endpoint is None:
            return []
        try:
            parts = urlsplit(self.otlp_endpoint)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            valid = False
        if not valid:
            return ["otlp_endpoint: expected an http(s) URL such as http://collector:4318"]
        if parts.username or parts.password:  # the exporter's errors print the URL
            return ["otlp_endpoint: no credentials in the URL; put them in "
                    "OTEL_EXPORTER_OTLP_HEADERS"]
        if not self.service_name.strip():
            return ["service_name: must not be empty"]
        if self.timeout_s <= 0:
            return ["timeout_s: must be positive"]
        from gateway.tracing import missing  # its own module knows what the extra brings

        absent = missing()
        return [f"otlp_endpoint: {absent}"] if absent is not None else []


@dataclass(frozen=True, slots=True)
class UpstreamTLSSettings:
    """https:// backends: a CA that signed their certificates (added to the system's), and
    a client certificate for backends that ask for one (vLLM's --ssl-cert-reqs 2)."""

    ca_file: Path | None = None  # PEM
    cert_file: Path | None = None  # PEM, with key_file
    key_file: Path | None = None

    def problems(self) -> list[str]:
        found = [f"{name}: no such file: {path}"
                 for name, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file),
                                    ("key_file", self.key_file))
                 if path is not None and not path.is_file()]
        if (self.cert_file is None) != (self.key_file is None):
            found.append("cert_file: a client certificate needs both cert_file and key_file")
        if not found:
            try:
                self.context()
            except ValueError as exc:
                found.append(str(exc))
        return found

    def context(self) -> ssl.SSLContext | None:
        """The context for the upstream connections; None: the system's defaults.
        ValueError naming the key of a file that cannot be loaded (not PEM, or a key that
        does not match its certificate)."""
        if self.ca_file is None and self.cert_file is None:
            return None
        context = ssl.create_default_context()  # the system's CAs stay (a public IdP)
        try:
            if self.ca_file is not None:
                context.load_verify_locations(cafile=self.ca_file)
        except ssl.SSLError as exc:
            raise ValueError(f"ca_file: not a PEM certificate ({exc.reason or exc})") from None
        try:
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise ValueError(f"cert_file: not a PEM certificate with its key "
                             f"({exc.reason or exc})") from None
        return context


@dataclass(frozen=True, slots=True)
class WatermarkSettings:
    ledger_retention_days: float = 365.0  # provenance records older than this are deleted
    # Forward vllm_xargs.gateway_key_id for the per-tenant logits processor
    # (gateway.vllm_plugin); only for upstreams that run it.
    forward_key_id: bool = False
    # postgresql://...: one ledger shared by every replica; default GATEWAY_HOME/ledger.sqlite3
    ledger_url: str | None = None


@dataclass(frozen=True, slots=True)
class OutputSettings:
    redact: tuple[str, ...] = ()  # literal strings replaced by "[redacted]" in output


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    upstreams: tuple[str, ...] = ()
    policies: Path = _PROJECT_POLICIES
    home: Path = Path(".gateway")
    redis_url: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    event_loop: str = "auto"  # auto (uvloop where installed) | uvloop | asyncio
    max_body_bytes: int = 4 * 1024 * 1024
    # The largest answer (non-streaming) or stream event read from a backend: past it, a
    # 502 (an error event once a stream began). vLLM's are far smaller; the bound keeps a
    # broken backend from filling the gateway's memory.
    max_answer_bytes: int = 128 * 1024 * 1024
    retries: int = 1  # extra attempts on another backend, only before any byte is sent
    drain_timeout_s: float = 30.0
    policy_poll_s: float = 2.0  # how often the policy directory is checked for changes
    # /readyz fails while no upstream is healthy. Behind a load balancer whose every
    # gateway shares the same upstreams, false keeps the gateway in rotation to answer
    # its own 503 `no healthy upstream` instead of the balancer's connection errors.
    readiness_requires_upstream: bool = True
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    sim: SimSettingsSpec = field(default_factory=SimSettingsSpec)
    output: OutputSettings = field(default_factory=OutputSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    watermark: WatermarkSettings = field(default_factory=WatermarkSettings)
    upstream_tls: UpstreamTLSSettings = field(default_factory=UpstreamTLSSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    @property
    def embedded_sim(self) -> bool:
        return not self.upstreams


_ENV = {
    "GATEWAY_UPSTREAM": "upstreams",
    "GATEWAY_POLICIES": "policies",
    "GATEWAY_REDIS_URL": "redis_url",
    "GATEWAY_HOME": "home",
    "GATEWAY_HOST": "host",
    "GATEWAY_PORT": "port",
    "GATEWAY_LOG_LEVEL": "log_level",
    "GATEWAY_LOG_FORMAT": "log_format",
    "GATEWAY_EVENT_LOOP": "event_loop",
    "GATEWAY_AUDIT_URL": "audit.url",
    "GATEWAY_LEDGER_URL": "watermark.ledger_url",
    "GATEWAY_OTLP_ENDPOINT": "tracing.otlp_endpoint",
}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise SettingsError(f"{key}: expected a mapping")
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, key)
    if origin is tuple:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
            # "," or "a,,b" is most likely a template whose variable expanded to nothing:
            # for upstreams, silently dropping it would mean the embedded simulator.
            if not all(items):
                raise SettingsError(f"{key}: empty entry in {value!r}; expected "
                                    "comma-separated values")
            value = items
        if not isinstance(value, list | tuple):
            raise SettingsError(f"{key}: expected a list")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{key}.{i}") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise SettingsError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        what = "a whole number" if tp is int else "a number"
        # int(80.5) is 80 and int(True) is 1: neither is what the file meant.
        if isinstance(value, bool) or (tp is int and isinstance(value, float)):
            raise SettingsError(f"{key}: expected {what}, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{key}: expected {what}, got {value!r}") from None
        if number < 0:
            raise SettingsError(f"{key}: must not be negative")
        return number
    if tp is Path:
        if not isinstance(value, str | Path):
            raise SettingsError(f"{key}: expected a path")
        return Path(value)
    if tp is str:
        if not isinstance(value, str | int | float):
            raise SettingsError(f"{key}: expected a string")
        return str(value)
    raise SettingsError(f"{key}: unsupported type")  # pragma: no cover - programming error


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in data:
        if name not in known:
            raise SettingsError(f"{prefix}{name}: unknown key (known: {', '.join(sorted(known))})")
    return cls(**{name: _coerce(hints[name], data[name], prefix + name) for name in data})


def _check(settings: Settings) -> None:
    bases: dict[str, int] = {}
    for i, url in enumerate(settings.upstreams):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"upstreams.{i}: expected an http(s) URL, got "
                                f"{redact_url(url)!r}")
        first = bases.setdefault(same_upstream_key(url), i)
        if first != i:  # one backend twice would get twice its share of the traffic
            raise SettingsError(f"upstreams.{i}: the same upstream as upstreams.{first}")
    if not 0 <= settings.port <= 65535:
        raise SettingsError("port: must be between 1 and 65535 (0: any free port)")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError("log_level: one of DEBUG, INFO, WARNING, ERROR")
    if settings.log_format.lower() not in LOG_FORMATS:
        raise SettingsError(f"log_format: one of {', '.join(LOG_FORMATS)}")
    if (why := check_event_loop(settings.event_loop)) is not None:
        raise SettingsError(f"event_loop: {why}")
    if settings.redis_url is not None and urlsplit(settings.redis_url).scheme not in \
            _REDIS_SCHEMES:
        raise SettingsError("redis_url: expected a redis://, rediss:// or unix:// URL")
    if settings.redis_url is not None and not installed("redis"):
        raise SettingsError("redis_url: the shared store needs the `redis` extra "
                            "(pip install 'gateway[redis]'); not installed: redis")
    if settings.max_body_bytes < 1024:
        raise SettingsError("max_body_bytes: must be at least 1024")
    if settings.max_answer_bytes < 65536:
        raise SettingsError("max_answer_bytes: must be at least 65536")
    if settings.timeouts.idle_s <= 0 or settings.timeouts.ttfb_s <= 0:
        raise SettingsError("timeouts: ttfb_s and idle_s must be positive")
    if settings.timeouts.client_header_s <= 0 or settings.timeouts.client_idle_s <= 0 \
            or settings.timeouts.client_send_s <= 0:
        raise SettingsError("timeouts: client_header_s, client_idle_s and client_send_s "
                            "must be positive")
    if settings.health.interval_s < MIN_PROBE_INTERVAL_S:  # each probe is 2 requests
        raise SettingsError(f"health.interval_s: must be at least {MIN_PROBE_INTERVAL_S}")
    if settings.health.probe_timeout_s <= 0:
        raise SettingsError("health.probe_timeout_s: must be positive")
    if settings.health.failures_to_eject < 1:
        raise SettingsError("health.failures_to_eject: must be at least 1")
    if settings.health.failed_probes_to_down < 1:
        raise SettingsError("health.failed_probes_to_down: must be at least 1")
    if settings.ratelimit.on_store_error not in ("fail_closed", "fail_open", "local"):
        raise SettingsError("ratelimit.on_store_error: one of fail_closed, fail_open, local")
    if settings.ratelimit.replicas < 1:
        raise SettingsError("ratelimit.replicas: must be at least 1")
    for problem in settings.auth.problems():
        raise SettingsError(f"auth.{problem}")
    for problem in settings.audit.problems():
        raise SettingsError(f"audit.{problem}")
    for problem in settings.tracing.problems():
        raise SettingsError(f"tracing.{problem}")
    for problem in settings.upstream_tls.problems():
        raise SettingsError(f"upstream_tls.{problem}")
    ledger_url = settings.watermark.ledger_url
    if ledger_url is not None and not is_postgres_url(ledger_url):
        raise SettingsError("watermark.ledger_url: expected a postgresql:// URL")


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


Where = Callable[[tuple[str, ...]], str | None]


def _validated(data: Mapping[str, Any], where: Where) -> Settings:
    """Settings from one layer (or the merged layers); an error is prefixed with where
    its key was written (`file:line`, or the environment variable)."""
    try:
        settings: Settings = _build(Settings, data)
        _check(settings)
    except SettingsError as exc:
        prefix = where(tuple(str(exc).split(":", 1)[0].split(".")))
        if prefix is None:
            raise
        raise SettingsError(f"{prefix}: {exc}") from None
    return settings


def _deepest(table: Mapping[tuple[str, ...], str], key: tuple[str, ...]) -> str | None:
    for n in range(len(key), 0, -1):
        if key[:n] in table:
            return table[key[:n]]
    return None


def _sets(layer: Mapping[str, Any], key: tuple[str, ...]) -> bool:
    """Whether layer gives key its value (itself or a list or value above it)."""
    node: Any = layer
    for part in key:
        if not isinstance(node, Mapping):
            return True  # e.g. upstreams.0 inside a list the layer wrote
        if part not in node:
            return False
        node = node[part]
    return True


def load_settings(
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from the config file, then env, then explicit overrides.

    Each layer is validated on its own before they are merged, so a bad value in the file
    stops start-up even where an environment variable or a flag overrides it.
    """
    env = os.environ if env is None else env
    config = config or (Path(env["GATEWAY_CONFIG"]) if env.get("GATEWAY_CONFIG") else None)
    located: Located | None = None
    data: dict[str, Any] = {}
    if config is not None:
        try:
            located = load_file(config)
        except YamlError as exc:
            raise SettingsError(str(exc)) from None
        if located.data is not None and not isinstance(located.data, Mapping):
            raise SettingsError(f"{config}:1: expected a mapping of settings")
        data = dict(located.data or {})
    env_layer: dict[str, Any] = {}
    env_names: dict[tuple[str, ...], str] = {}
    for name, setting in _ENV.items():
        if env.get(name):  # set but empty is unset, as in most shells' ${VAR:-default}
            *sections, leaf = setting.split(".")
            target = env_layer
            for section in sections:
                target = target.setdefault(section, {})
            target[leaf] = env[name]
            env_names[tuple(setting.split("."))] = name

    def in_file(key: tuple[str, ...]) -> str | None:
        return located.where(key) if located is not None else None

    def in_env(key: tuple[str, ...]) -> str | None:
        return _deepest(env_names, key)

    flags = dict(overrides or {})

    def anywhere(key: tuple[str, ...]) -> str | None:
        if _sets(flags, key):
            return None  # a flag: the message needs no place
        return in_env(key) or in_file(key)

    _validated(data, in_file)
    _validated(env_layer, in_env)
    return _validated(_merge(_merge(data, env_layer), flags), anywhere)
