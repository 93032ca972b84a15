"""Backend pool: discovery, health and least-outstanding-requests routing.

Each backend's models come from its own /v1/models, refreshed with the active health
probe; a backend that was up counts as down after `failed_probes_to_down` consecutive
failed probes. A listing that fails or makes no sense fails the probe and keeps the last
good list: one bad answer must not make a backend's models vanish. Passive ejection takes
a backend out of rotation after consecutive failed attempts; it returns once the ejection
period has passed and a probe succeeds. With `panic_routing`, a model whose every backend
is ejected is still routed among those the probe finds healthy: failures a client can
provoke must not turn into an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.errors import ModelNotFound, Unavailable, shown
from gateway.metrics import Metrics
from gateway.pipeline.upstream.reading import SMALL_BODY_BYTES, BodyTooLarge, read_bounded
from gateway.settings import HealthSettings
from gateway.urls import redact, upstream_base

log = logging.getLogger("gateway.upstream")

# The next health probe may bring a backend back: clients (the SDKs honour it) wait that
# long rather than retrying at once.
_RETRY = {"Retry-After": "1"}


def _listing(body: bytes) -> dict[str, dict[str, Any]] | None:
    """A /v1/models answer's models by id; None when it is no model list at all (some
    servers answer `"data": null` while nothing is loaded)."""
    try:
        listing = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    return {m["id"]: m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}


@dataclass(eq=False, slots=True)
class Backend:
    url: str  # as configured: may carry user info the upstream needs
    name: str = ""  # the URL with its password masked: for logs and metric labels
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> model object
    healthy: bool = False
    outstanding: int = 0
    failures: int = 0
    ejected_until: float = 0.0
    failed_probes: int = 0  # consecutive
    probed: bool = False  # whether any probe has finished yet

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


class Pool:
    def __init__(self, urls: tuple[str, ...], session: aiohttp.ClientSession,
                 health: HealthSettings, metrics: Metrics, api_key: str | None = None) -> None:
        self.backends = tuple(Backend(upstream_base(url), redact(upstream_base(url)))
                              for url in urls)
        # vLLM's --api-key: sent on every call to a backend (never to anyone else).
        self.auth_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = session
        self._health = health
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        for backend in self.backends:  # read at scrape time: nothing on the request path
            metrics.upstream_outstanding.labels(backend.name).set_function(
                lambda backend=backend: backend.outstanding)
            metrics.upstream_ejected.labels(backend.name).set(0)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._probe_forever(), name="upstream-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        outcomes = await asyncio.gather(*(self._probe(b) for b in self.backends),
                                        return_exceptions=True)
        for backend, outcome in zip(self.backends, outcomes, strict=True):
            if isinstance(outcome, Exception):  # a bug: the probing must go on regardless
                log.error("probing upstream %s failed: %s: %s", backend.name,
                          type(outcome).__name__, outcome)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._health.interval_s)
            await self.refresh()

    async def _probe(self, backend: Backend) -> None:
        timeout = aiohttp.ClientTimeout(total=self._health.probe_timeout_s)
        why = ""
        try:
            async with self._session.get(f"{backend.url}/health", timeout=timeout,
                                         headers=self.auth_headers,
                                         allow_redirects=False) as resp:
                passed = resp.status == 200
                why = f"/health answered {resp.status}"
            if passed:
                async with self._session.get(f"{backend.url}/v1/models", timeout=timeout,
                                             headers=self.auth_headers,
                                             allow_redirects=False) as resp:
                    status, body = resp.status, await read_bounded(resp, SMALL_BODY_BYTES)
                models = _listing(body) if status == 200 else None
                if models is None:  # the last good list stays
                    passed, why = False, f"/v1/models answered {status} without a model list"
                else:
                    backend.models = models
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
            passed, why = False, exc.__class__.__name__
        backend.failed_probes = 0 if passed else backend.failed_probes + 1
        healthy = passed or (backend.healthy and
                             backend.failed_probes < self._health.failed_probes_to_down)
        if healthy != backend.healthy or not backend.probed:
            # The first probe always says how it went: an upstream unreachable from the
            # start was never reported.
            if healthy:
                log.info("upstream %s is healthy", backend.name)
            else:
                log.warning("upstream %s is unhealthy (%s)", backend.name, why)
        elif not passed and healthy:
            log.info("upstream %s failed a health probe (%d in a row)", backend.name,
                     backend.failed_probes)
        backend.probed = True
        backend.healthy = healthy
        if passed and backend.ejected_until and time.monotonic() >= backend.ejected_until:
            backend.failures, backend.ejected_until = 0, 0.0
        self._show(backend)

    def _show(self, backend: Backend) -> None:
        """gateway_upstream_healthy: 1 while the backend takes requests, which an ejected
        one still does when panic routing sends its models there."""
        now = time.monotonic()
        self._metrics.upstream_healthy.labels(backend.name).set(
            1 if self._in_rotation(backend, now) else 0)
        self._metrics.upstream_ejected.labels(backend.name).set(
            1 if now < backend.ejected_until else 0)

    def _in_rotation(self, backend: Backend, now: float) -> bool:
        if backend.available(now):
            return True
        if not (self._health.panic_routing and backend.healthy):
            return False
        return any(not any(other.available(now) for other in self.backends
                           if model in other.models) for model in backend.models)

    # -- routing ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        if self._health.panic_routing:
            return any(b.healthy for b in self.backends)
        now = time.monotonic()
        return any(b.available(now) for b in self.backends)

    def knows(self, model: str) -> bool:
        """Cheap membership test for metric labels (no dict is built)."""
        return any(model in b.models for b in self.backends)

    def context_length(self, model: str) -> int | None:
        """The smallest `max_model_len` the backends serving `model` report (vLLM lists it
        in /v1/models), None when none does."""
        lengths = [entry["max_model_len"] for b in self.backends
                   if (entry := b.models.get(model)) is not None
                   and type(entry.get("max_model_len")) is int and entry["max_model_len"] > 0]
        return min(lengths) if lengths else None

    def models(self) -> dict[str, dict[str, Any]]:
        """Every model any backend has reported, first report wins."""
        merged: dict[str, dict[str, Any]] = {}
        for backend in self.backends:
            for model_id, entry in backend.models.items():
                merged.setdefault(model_id, entry)
        return merged

    def pick(self, model: str, exclude: frozenset[Backend] = frozenset()) -> Backend:
        """The available backend serving `model` with the fewest outstanding requests."""
        now = time.monotonic()
        serving = [b for b in self.backends if model in b.models]
        if not serving:
            if any(b.models for b in self.backends):
                raise ModelNotFound(f"The model '{shown(model)}' does not exist", param="model")
            raise Unavailable("No healthy upstream is available", headers=_RETRY)
        candidates = [b for b in serving if b.available(now) and b not in exclude]
        if not candidates and self._health.panic_routing:
            candidates = [b for b in serving if b.healthy and b not in exclude]
            if candidates:
                self._metrics.upstream_panic.inc()
        if not candidates:
            raise Unavailable(f"No healthy upstream is serving '{shown(model)}'",
                              headers=_RETRY)
        fewest = min(b.outstanding for b in candidates)
        return random.choice([b for b in candidates if b.outstanding == fewest])

    @contextlib.contextmanager
    def lease(self, backend: Backend) -> Iterator[Backend]:
        backend.outstanding += 1
        try:
            yield backend
        finally:
            backend.outstanding -= 1

    def succeeded(self, backend: Backend) -> None:
        backend.failures = 0

    def failed(self, backend: Backend, kind: str) -> None:
        self._metrics.upstream_errors.labels(kind).inc()
        self._metrics.upstream_failures.labels(backend.name, kind).inc()
        backend.failures += 1
        if backend.failures >= self._health.failures_to_eject and backend.healthy:
            now = time.monotonic()
            if now < backend.ejected_until:
                return  # ejected already: its ejection is not extended, nor logged again
            backend.ejected_until = now + self._health.eject_s
            for each in self.backends:  # another may now be routed to in panic
                self._show(each)
            log.warning("upstream %s ejected for %gs after %d failures", backend.name,
                        self._health.eject_s, backend.failures)
