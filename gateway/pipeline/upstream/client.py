"""Sending a request upstream: backend choice, timeouts, retries, error mapping.

A request is retried on another backend only while nothing has been sent to the client:
on a refused or reset connection, a 502/503/504 answer, a redirect (never followed), or
a stream that ends before its first answer. A time-out is not retried (it would double
the client's wait). A 4xx, as an HTTP status or as a stream's first event, is the
client's answer: the backend refused the request, so it is neither retried nor held
against the backend.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import orjson

from gateway.context import UPSTREAM_PATHS, RequestContext
from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    Unavailable,
    UpstreamStatus,
    normalise_upstream_error,
)
from gateway.pipeline.shape import completion_bound, generations
from gateway.pipeline.upstream.echo import withhold_echo
from gateway.pipeline.upstream.http import ConnectFailed, UpstreamHTTP, UpstreamResponse
from gateway.pipeline.upstream.pool import Backend, Pool
from gateway.pipeline.upstream.reading import SMALL_BODY_BYTES, BodyTooLarge, read_bounded
from gateway.settings import TimeoutSettings

log = logging.getLogger("gateway.upstream")
T = TypeVar("T")

_RETRY_STATUSES = frozenset({502, 503, 504})


class RetryUpstream(Exception):
    """Raised by a relay that failed before sending the client anything."""

    def __init__(self, error: GatewayError, kind: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.kind = kind


def failure_kind(exc: aiohttp.ClientError) -> str:
    """The metric's `kind` for a request that failed before any answer: `connect` when no
    connection could be opened, `reset` when the backend closed or reset it, else
    `protocol` (an answer that is not HTTP)."""
    if isinstance(exc, ConnectFailed):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "reset"
    return "protocol"


def refusal(status: int, raw: bytes, body: dict[str, Any],
            retry_after: str = "") -> UpstreamStatus:
    """An upstream 4xx as the client gets it: OpenAI's error shape, no quotation of the
    request in its message, and on a 429 a Retry-After (every 429 says when to come back;
    vLLM's may not)."""
    headers = None
    if status == 429:
        headers = {"Retry-After": retry_after if retry_after.isdigit() else "1"}
    return withhold_echo(normalise_upstream_error(status, raw, headers), body)


class UpstreamClient:
    def __init__(self, pool: Pool, http: UpstreamHTTP, timeouts: TimeoutSettings,
                 retries: int) -> None:
        self.pool = pool
        self.http = http
        self._timeouts = timeouts
        self._retries = retries

    async def forward(self, ctx: RequestContext,
                      relay: Callable[[UpstreamResponse], Awaitable[T]]) -> T:
        """Send ctx.body to a backend and hand its 2xx response to `relay`."""
        if ctx.route != "embeddings":
            context = self.pool.context_length(ctx.model)
            if context is not None:
                ctx.usage_ceiling = context * generations(ctx.body)
            ctx.completion_ceiling = completion_bound(ctx.body)
        body = orjson.dumps(ctx.body)
        tried: list[Backend] = []
        error: GatewayError | None = None
        for _ in range(1 + self._retries):
            try:
                backend = self._pick(ctx.model, tried)
            except Unavailable:
                if error is not None:
                    raise error from None
                raise
            tried.append(backend)
            with self.pool.lease(backend):
                try:
                    resp = await self._send(backend, ctx, body)
                except aiohttp.ClientError as exc:
                    self.pool.failed(backend, failure_kind(exc))
                    log.warning("upstream %s failed: %s", backend.name, exc.__class__.__name__)
                    error = BadGateway("The upstream server could not be reached")
                    continue
                except TimeoutError:
                    self.pool.failed(backend, "timeout")
                    raise GatewayTimeout("The upstream server did not answer in time") from None
                try:
                    if 300 <= resp.status < 400:
                        # Never followed (a 307 would take the prompt to the host it
                        # names): a backend that redirects is misconfigured.
                        self.pool.failed(backend, "redirect")
                        error = BadGateway("The upstream server answered with a redirect")
                        continue
                    if resp.status >= 400:
                        error = await self._status_error(backend, resp, ctx.body)
                        continue
                    result = await relay(resp)
                except RetryUpstream as exc:
                    self.pool.failed(backend, exc.kind)
                    error = exc.error
                    continue
                except GatewayTimeout:  # a stream's first event never came: not retried
                    self.pool.failed(backend, "timeout")
                    raise
                finally:
                    resp.release()  # an unfinished body closes the connection: vLLM aborts
                self.pool.succeeded(backend)
                return result
        assert error is not None
        raise error

    def _pick(self, model: str, tried: list[Backend]) -> Backend:
        try:
            return self.pool.pick(model, frozenset(tried))
        except Unavailable:
            if not tried:
                raise
            # Every candidate was tried once; a second try may land on a fresh connection.
            return self.pool.pick(model)

    async def _send(self, backend: Backend, ctx: RequestContext,
                    body: bytes) -> UpstreamResponse:
        url = backend.url + UPSTREAM_PATHS[ctx.route]
        async with asyncio.timeout(self._timeouts.ttfb_s):
            headers = {**ctx.upstream_headers(), **self.pool.auth_headers}
            return await self.http.post(url, body, headers)  # redirects are not followed

    async def _status_error(self, backend: Backend, resp: UpstreamResponse,
                            body: dict[str, Any]) -> GatewayError:
        """The error to retry with, or raise at once when retrying cannot help."""
        try:
            async with asyncio.timeout(self._timeouts.idle_s):
                raw = await read_bounded(resp, SMALL_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge):
            raw = b""
        if resp.status in _RETRY_STATUSES:
            self.pool.failed(backend, f"status_{resp.status}")
            if resp.status == 504:
                return GatewayTimeout("The upstream server timed out")
            return Unavailable("The upstream server is unavailable") if resp.status == 503 \
                else BadGateway("The upstream server failed")
        if resp.status >= 500:
            self.pool.failed(backend, "status_5xx")
            raise BadGateway("The upstream server failed to process the request")
        if resp.status in (401, 403):
            # Not the caller's doing: the backend refused the gateway's own key (its
            # --api-key and GATEWAY_SECRET_UPSTREAM_API_KEY disagree).
            self.pool.failed(backend, "unauthorized")
            log.warning("upstream %s refused the gateway's credentials (HTTP %d)",
                        backend.name, resp.status)
            return BadGateway("The upstream server refused the gateway's credentials")
        raise refusal(resp.status, raw, body, resp.headers.get("Retry-After", ""))
