"""create_app(settings): the one place that wires the gateway together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.context import LIFECYCLE, METRICS, PIPELINE, POOL, SETTINGS, UPSTREAM, RequestContext
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.middleware import add_headers, observe, render_errors
from gateway.pipeline import Pipeline
from gateway.pipeline.output import OutputFilter
from gateway.pipeline.output.redact import RedactFilter
from gateway.pipeline.shape import ShapeStage
from gateway.pipeline.upstream.client import UpstreamClient
from gateway.pipeline.upstream.pool import Pool
from gateway.routes import add_routes
from gateway.settings import Settings


def build_pipeline(settings: Settings) -> Pipeline:
    filters = []
    if settings.output.redact:
        terms = settings.output.redact

        def redact(ctx: RequestContext) -> OutputFilter:
            return RedactFilter(terms)

        filters.append(redact)
    return Pipeline(stages=(ShapeStage(),), output_filters=tuple(filters))


async def _upstream(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # limit=0: no connection cap, so hundreds of concurrent streams never queue here.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        pool = Pool(settings.upstreams, session, settings.health, app[METRICS])
        app[POOL] = pool
        app[UPSTREAM] = UpstreamClient(pool, session, settings.timeouts, settings.retries)
        await pool.start()
        yield
        await pool.close()


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[observe, render_errors])
    app[SETTINGS] = settings
    app[METRICS] = Metrics(registry if registry is not None else CollectorRegistry())
    app[LIFECYCLE] = Lifecycle()
    app[PIPELINE] = build_pipeline(settings)
    app.cleanup_ctx.append(_upstream)
    app.on_response_prepare.append(add_headers)
    add_routes(app)
    return app


make_runner = partial(web.AppRunner, handler_cancellation=True, access_log=None)
