"""create_app(settings): the one place that wires the gateway together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.admin import add_admin_routes
from gateway.audit import AUDIT, AUDIT_KEYS, AuditKeys, AuditLog
from gateway.audit.http import add_audit_routes
from gateway.audit.store import describe
from gateway.context import (
    CLASSIFY,
    LIFECYCLE,
    LIMITER,
    METRICS,
    PIPELINE,
    POOL,
    RELOADER,
    SETTINGS,
    UPSTREAM,
    RequestContext,
)
from gateway.lifecycle import Lifecycle, StartupError
from gateway.metrics import Metrics, watch_tasks
from gateway.middleware import add_headers, observe, render_errors
from gateway.pipeline import Authenticator, Pipeline, PipelineRef
from gateway.pipeline.classify import ClassifyRuntime
from gateway.pipeline.output import OutputFilter
from gateway.pipeline.output.redact import RedactFilter
from gateway.pipeline.ratelimit import FallbackLimiter, Limiter, MemoryLimiter
from gateway.pipeline.ratelimit.leases import Leasing
from gateway.pipeline.ratelimit.stage import RateLimitStage
from gateway.pipeline.shape import ShapeStage
from gateway.pipeline.tier import TierStage
from gateway.pipeline.upstream.client import UpstreamClient
from gateway.pipeline.upstream.http import UpstreamHTTP
from gateway.pipeline.upstream.pool import Pool
from gateway.pipeline.upstream.tokens import PromptCounter
from gateway.pipeline.watermark.filters import watermark_filters
from gateway.pipeline.watermark.ledger import Ledger
from gateway.pipeline.watermark.runtime import WATERMARK, WatermarkRuntime
from gateway.policy.loader import PolicyError, load_policy
from gateway.policy.reload import PolicyReloader
from gateway.policy.spec import PolicySpec
from gateway.routes import add_routes
from gateway.secret_store import given_secret, load_secret
from gateway.settings import Settings
from gateway.tracing import TRACING, Tracing

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("gateway")

FilterFactory = Callable[[RequestContext], OutputFilter | None]


@dataclass(frozen=True, slots=True)
class Runtime:
    """Long-lived resources the pipeline's stages use; outlives any one policy."""

    settings: Settings
    metrics: Metrics
    auth: Authenticator
    counter: PromptCounter
    cache_salt_secret: bytes
    limiter: Limiter
    watermark: WatermarkRuntime
    classify: ClassifyRuntime


def _side_filters(rt: Runtime, policy: PolicySpec) -> tuple[FilterFactory, ...]:
    """For every text the model writes: output moderation (sees the model's own text),
    then redaction."""
    filters: list[FilterFactory] = [rt.classify.output_filter(policy)]
    if rt.settings.output.redact:
        terms = rt.settings.output.redact

        def redact(ctx: RequestContext) -> OutputFilter | None:
            return RedactFilter(terms)

        filters.append(redact)
    return tuple(filters)


def _output_filters(rt: Runtime, policy: PolicySpec) -> tuple[FilterFactory, ...]:
    """The answer's content: the side filters, then the watermark payload, then the
    ledger fingerprint."""
    return (*_side_filters(rt, policy), *watermark_filters(rt.watermark, policy.version))


def build_pipeline(policy: PolicySpec, rt: Runtime) -> Pipeline:
    """Everything a request passes, in order, for one policy version."""
    stages = (
        ShapeStage(),
        TierStage(policy, rt.cache_salt_secret, rt.counter),
        # Before classification: a refused request still counts against the caller's
        # request limits, so nobody can probe the classifiers (and spend their CPU) without
        # limit. A refusal after an admission settles it with nothing used (routes.py).
        RateLimitStage(rt.limiter, policy, rt.metrics, rt.counter),
        rt.classify.stage(policy),
    )
    return Pipeline(auth=rt.auth, stages=stages, output_filters=_output_filters(rt, policy),
                    side_filters=_side_filters(rt, policy), policy=policy,
                    version=policy.version)


async def _start_auth(settings: Settings, session: aiohttp.ClientSession, metrics: Metrics,
                      ) -> tuple[Authenticator, Callable[[], Awaitable[None]]]:
    from gateway.pipeline.auth import AuthStage, build_verifier

    client = None
    auth = settings.auth
    if settings.redis_url is not None:  # revoked jtis are shared through a Redis set too
        client = redis_client(settings.redis_url, auth.revocation_redis_timeout_s)
        if auth.revocation_on_error is None:  # one answer to "Redis is down": the limiter's
            closed = settings.ratelimit.on_store_error == "fail_closed"
            auth = dataclasses.replace(
                auth, revocation_on_error="fail_closed" if closed else "fail_open")
    verifier = build_verifier(auth, settings.home, session, redis=client,
                              on_store_error=metrics.revocation_store_errors.inc)
    await verifier.start()  # a JWKS URL that is down only warns: keys arrive later

    async def close() -> None:
        await verifier.close()
        if client is not None:
            await client.aclose()

    return AuthStage(verifier, lambda reason: metrics.auth_failures.labels(reason).inc()), \
        close


REDIS_CONNECTIONS = 32  # per process: a burst waits for a connection instead of opening one


def redis_client(url: str, timeout_s: float) -> Redis:
    """A redis.asyncio client on a bounded pool. Without a bound, a burst of requests
    opened a connection each (hundreds at once), and their set-up alone outlasted the
    time-out: the store looked down while it was idle. A command that meets a closed
    connection (Redis restarted since it was pooled) is tried once more on a new one,
    at once; a time-out is not (it would double the wait)."""
    import redis.asyncio  # the `redis` extra
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_CONNECTIONS, timeout=None,
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    return redis.asyncio.Redis.from_pool(pool)  # so aclose() closes its connections too


def _limiter(settings: Settings, metrics: Metrics,
             ) -> tuple[Limiter, Callable[[], Awaitable[None]]]:
    """Redis (with its fail mode) when configured, else this process's memory."""
    def show(mode: str) -> None:
        metrics.ratelimit_mode.clear()
        metrics.ratelimit_mode.labels(mode).set(1)

    if settings.redis_url is None:
        memory = Leasing(MemoryLimiter())
        memory.start()
        show("memory")
        return memory, memory.close
    from gateway.pipeline.ratelimit.redis import RedisLimiter  # the `redis` extra

    rl = settings.ratelimit
    client = redis_client(settings.redis_url, rl.redis_timeout_s)
    limiter = Leasing(FallbackLimiter(
        RedisLimiter(client, rl.redis_prefix, rl.redis_timeout_s),
        rl.on_store_error, rl.replicas,  # type: ignore[arg-type]
        on_mode_change=show, on_store_error=metrics.ratelimit_store_errors.inc))
    limiter.start()
    show(limiter.mode)

    async def close() -> None:
        await limiter.close()
        await client.aclose()

    return limiter, close


def _uses_embedding(policies: Path) -> bool:
    try:
        return load_policy(policies).classifiers.embedding.enabled
    except PolicyError:
        return True  # the reloader reports it; a policy fixed later may want the model


# Idle upstream connections are closed before vLLM closes them (its keep-alive is 5 s,
# VLLM_HTTP_TIMEOUT_KEEP_ALIVE): a request sent on a connection the backend is closing at
# that moment fails with a reset, which counts against the backend. The health probe runs
# every 5 s by default, right at the edge.
UPSTREAM_KEEPALIVE_S = 4.0


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    settings, metrics = app[SETTINGS], app[METRICS]
    # limit=0: no connection cap, so hundreds of concurrent streams never queue here.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0,
                                     keepalive_timeout=UPSTREAM_KEEPALIVE_S,
                                     ssl=settings.upstream_tls.context() or True)
    # No cookie jar: one session serves every caller, so a cookie a backend (or a balancer
    # in front of it) set must never ride along with the next caller's request. Bytes are
    # relayed as they come (no decompression), so none are asked for compressed: a proxy
    # in front of vLLM would otherwise gzip what the relay has to read.
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"Accept-Encoding": "identity"}) as session:
        pool = Pool(settings.upstreams, session, settings.health, metrics,
                    api_key=given_secret("upstream_api_key"))
        app[POOL] = pool
        http = UpstreamHTTP(connect_timeout_s=settings.timeouts.connect_s,
                            keepalive_s=UPSTREAM_KEEPALIVE_S,
                            tls=settings.upstream_tls.context())
        app[UPSTREAM] = UpstreamClient(pool, http, settings.timeouts, settings.retries)
        auth, close_auth = await _start_auth(settings, session, metrics)
        limiter, close_limiter = _limiter(settings, metrics)
        app[LIMITER] = limiter
        classify = ClassifyRuntime(metrics, http)
        # The embedding model (hundreds of MB) loads once, and only for a policy that uses it.
        await classify.start(load_model=_uses_embedding(settings.policies))
        app[CLASSIFY] = classify
        rt = Runtime(settings=settings, metrics=metrics, auth=auth, limiter=limiter,
                     watermark=app[WATERMARK], classify=classify,
                     counter=PromptCounter(pool, http),
                     cache_salt_secret=load_secret(settings.home, "cache_salt"))
        ref = PipelineRef(None)

        def build(policy: PolicySpec) -> Callable[[], None]:
            pipeline = build_pipeline(policy, rt)

            def swap() -> None:
                ref.current = pipeline

            return swap

        reloader = PolicyReloader(settings.policies, build, metrics, settle=classify.prepared)
        reloader.load_initial()
        await classify.prepared()  # the model's pass for the policy's head, before /readyz
        app[PIPELINE], app[RELOADER] = ref, reloader
        await pool.start()
        watcher = asyncio.create_task(reloader.watch(settings.policy_poll_s), name="policy-watch")
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await pool.close()
        await http.close()
        await close_auth()
        await close_limiter()
        await classify.close()


async def _watermark(app: web.Application) -> AsyncIterator[None]:
    """The signing secret and the provenance ledger, closed after the last response."""
    settings, metrics = app[SETTINGS], app[METRICS]
    where = settings.watermark.ledger_url or settings.home / "ledger.sqlite3"
    ledger = Ledger.at(where, metrics, retention_days=settings.watermark.ledger_retention_days)
    try:
        await ledger.start()
    except Exception as exc:
        raise StartupError(f"cannot open the provenance ledger at {describe(where)}: "
                           f"{_reason(exc)}") from exc
    app[WATERMARK] = WatermarkRuntime(load_secret(settings.home, "watermark"), ledger, metrics)
    yield
    await ledger.close()


def _reason(exc: BaseException) -> str:
    """The first line of an error, for a one-line start-up message (stores scrub their
    own messages of passwords; see audit.postgres)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


async def _audit(app: web.Application) -> AsyncIterator[None]:
    """Opened before, and closed after, everything that submits records."""
    settings, metrics = app[SETTINGS], app[METRICS]
    app[AUDIT_KEYS] = AuditKeys(load_secret(settings.home, "audit"))

    def dropped(n: int) -> None:
        metrics.audit_dropped.inc(n)
        metrics.audit_records.labels("dropped").inc(n)

    audit = AuditLog(settings.audit, settings.home,
                     on_written=lambda n: metrics.audit_records.labels("written").inc(n),
                     on_dropped=dropped,
                     on_failed=lambda n: metrics.audit_records.labels("error").inc(n))
    try:
        await audit.start()
    except Exception as exc:
        raise StartupError(f"cannot open the audit log at {describe(audit.location)}: "
                           f"{_reason(exc)}") from exc
    app[AUDIT] = audit
    yield
    await audit.close()


async def _watch_tasks(app: web.Application) -> None:
    watch_tasks(app[METRICS], asyncio.get_running_loop())


async def _tracing(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS].tracing
    tracing = Tracing(settings) if settings.otlp_endpoint is not None else None
    app[TRACING] = tracing
    yield
    if tracing is not None:
        await asyncio.to_thread(tracing.close)


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[observe, render_errors])
    app[SETTINGS] = settings
    app[METRICS] = Metrics(registry if registry is not None else CollectorRegistry())
    app[LIFECYCLE] = Lifecycle()
    app.cleanup_ctx.append(_tracing)  # first in, last out: spans of every response flushed
    app.cleanup_ctx.append(_audit)
    app.cleanup_ctx.append(_watermark)
    app.cleanup_ctx.append(_runtime)
    app.on_startup.append(_watch_tasks)
    app.on_response_prepare.append(add_headers)
    add_routes(app)
    add_admin_routes(app)
    add_audit_routes(app)
    return app
