"""Per-request facts (RequestContext) and the typed keys for app and request state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

if TYPE_CHECKING:
    from gateway.lifecycle import Lifecycle
    from gateway.metrics import Metrics
    from gateway.pipeline import Decision, PipelineRef
    from gateway.pipeline.classify import ClassifyRuntime
    from gateway.pipeline.classify.verdict import Verdict
    from gateway.pipeline.ratelimit import Limiter
    from gateway.pipeline.upstream.client import UpstreamClient
    from gateway.pipeline.upstream.pool import Pool
    from gateway.policy.reload import PolicyReloader
    from gateway.policy.spec import TierSpec
    from gateway.settings import Settings

Route = Literal["chat", "completions", "embeddings"]

# The path each route forwards to upstream.
UPSTREAM_PATHS: dict[Route, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, from a verified token. `sub` never leaves the gateway in labels."""

    sub: str
    tier: str
    org: str | None = None
    scopes: frozenset[str] = frozenset()
    jti: str | None = None
    expires_at: float = 0.0  # the token's exp, epoch seconds


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when the numbers came from the backend's usage block, False when counted here.
    reported: bool = False


@dataclass(slots=True)
class RequestContext:
    """What the stages know about one request; each stage reads and may amend it."""

    request_id: str
    route: Route
    body: dict[str, Any]  # the body that will be forwarded, already shaped
    model: str
    stream: bool = False
    client_wants_usage: bool = False
    principal: Principal | None = None
    tier: str = "-"
    tier_spec: TierSpec | None = None
    prompt_tokens: int | None = None  # counted once (tokenizer or estimate), then reused
    decision: str = "allow"
    started: float = field(default_factory=time.perf_counter)
    overhead_s: float = 0.0  # time in the gateway's own code, upstream waits excluded
    client_gone: bool = False  # the client disconnected before the response ended
    response_headers: dict[str, str] = field(default_factory=dict)  # stages add, relay sends
    # Called once when the response has ended, however it ended (refund unused tokens).
    settle: Callable[[], object] | None = None
    verdict: Verdict | None = None  # set by the classify stage
    # Overlap (see routes): the classify stage's late Decision, and the gate the relay
    # waits at before the client sees anything; held_s is how long it waited there.
    pending: asyncio.Task[Decision] | None = None
    answer_ready: asyncio.Event | None = None  # set at the gate: the model's budget starts
    gate: asyncio.Future[None] | None = None
    held_s: float = 0.0
    limit: str = "none"  # admitted | refused:<kind> | none, set by the ratelimit stage
    watermark_key_id: str | None = None  # set when the response carried a watermark
    # Output moderation's finding: "block" (the answer was cut) or "flag", and on what.
    output_action: str = "none"
    output_categories: tuple[str, ...] = ()
    audited: bool = False  # the audit record has been written
    key_id: str = "-"  # the caller's keyed id, as audited (for the log line)
    usage: Usage = field(default_factory=Usage)
    traceparent: str | None = None  # the gateway span's, sent upstream (tracing on)
    # What the relay saw of the backend's answer (span attributes; a tuple: no allocation).
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    status: int | None = None  # the status audited and logged (a broken stream's error)
    # The most tokens the backend can have read and written for this request (each
    # sequence fits the model's context), when the backend reports its context length: a
    # usage count past it is not charged (relay.py).
    usage_ceiling: int | None = None
    # The most completion tokens it can have generated (max_tokens per sequence), when the
    # request names a max_tokens: holds where the backend reports no context length.
    completion_ceiling: int | None = None

    def upstream_headers(self) -> dict[str, str]:
        """Headers of every call made upstream for this request, so the backend's logs and
        traces join the gateway's."""
        headers = {"content-type": "application/json", "x-request-id": self.request_id}
        if self.traceparent:
            headers["traceparent"] = self.traceparent
        return headers

    @property
    def prompt_tokens_used(self) -> int:
        """What the limiter settles and the metrics count: the backend's count where it
        reported usage; else the gateway's own once an answer began (a stream cut before
        its usage chunk), and nothing when none did (the upstream failed or refused)."""
        if self.usage.reported:
            return self.usage.prompt_tokens
        return (self.prompt_tokens or 0) if self.usage.completion_tokens else 0

    async def hold(self) -> None:
        """Called by the relay before the client's response begins: waits for a verdict
        still being reached, if any."""
        if self.answer_ready is not None:
            self.answer_ready.set()
        gate = self.gate
        if gate is not None and not gate.done():
            started = time.perf_counter()
            await gate
            self.held_s = time.perf_counter() - started
            self.overhead_s += self.held_s
            self.response_headers["x-gateway-overhead-ms"] = f"{self.overhead_s * 1000:.2f}"


SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
POOL: web.AppKey[Pool] = web.AppKey("pool")
PIPELINE: web.AppKey[PipelineRef] = web.AppKey("pipeline")
LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle")
UPSTREAM: web.AppKey[UpstreamClient] = web.AppKey("upstream")
RELOADER: web.AppKey[PolicyReloader] = web.AppKey("reloader")
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
CLASSIFY: web.AppKey[ClassifyRuntime] = web.AppKey("classify")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
CONTEXT: web.RequestKey[RequestContext] = web.RequestKey("context")
# The caller's tier once known to the policy, for requests with no RequestContext (models).
TIER: web.RequestKey[str] = web.RequestKey("tier")
# Who asked, once the token checked out: the log line of a request with no audit record
# (admin calls, models) names the caller by its keyed id.
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
