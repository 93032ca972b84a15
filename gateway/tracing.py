"""Optional OpenTelemetry trace export: one span per request, GenAI attribute names.

Off unless `tracing.otlp_endpoint` (GATEWAY_OTLP_ENDPOINT) is set, and then it needs the
`otel` extra: settings refuse to load without it, saying so. The SDK is imported only
here, only then, onto a TracerProvider owned by the app (never the global one): with
tracing off the per-request cost is one None check in the middleware.

Span kind is SERVER. The GenAI conventions define their span as the *caller's* view of a
model call (kind CLIENT); here that is the caller's SDK span, which becomes our parent
through `traceparent`. The gateway is the server that call reaches, and a CLIENT span
under a CLIENT span would break the client/server pairing that service graphs and
per-service RED metrics are built from. It is still named "{operation} {model}" and
carries the GenAI attributes, so GenAI views find it. vLLM's own spans (when it traces)
hang below it: the upstream request carries this span's `traceparent`.

Status follows the HTTP server convention: ERROR (with `error.type`) for 5xx, including
a stream that broke after its 200; a refusal (4xx) is the gateway doing its job and is
told by `gateway.decision` and the status code, not an error status.

Never on a span: prompts, completions, tokens, subjects, stop sequences.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.context import CONTEXT, REQUEST_ID, RequestContext
from gateway.extras import absent
from gateway.logs import genai_fields

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gateway.settings import TracingSettings

# The distributions the `otel` extra brings (the API comes with the SDK).
_REQUIRED = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
_INSTALL = "pip install 'gateway[otel]'"
_INT64 = -(2**63)
# Numeric request parameters copied onto the span when the body has them (GenAI names).
_REQUEST_ATTRIBUTES = (("max_tokens", "gen_ai.request.max_tokens"),
                       ("max_completion_tokens", "gen_ai.request.max_tokens"),
                       ("temperature", "gen_ai.request.temperature"),
                       ("top_p", "gen_ai.request.top_p"),
                       ("top_k", "gen_ai.request.top_k"),
                       ("frequency_penalty", "gen_ai.request.frequency_penalty"),
                       ("presence_penalty", "gen_ai.request.presence_penalty"),
                       ("seed", "gen_ai.request.seed"),
                       ("n", "gen_ai.request.choice.count"))


class TracingUnavailable(RuntimeError):
    """Tracing is configured but the `otel` extra is not installed."""


def missing() -> str | None:
    """Why tracing cannot run here, or None when the `otel` extra is installed."""
    lacking = absent(*_REQUIRED)
    if not lacking:
        return None
    return f"tracing needs the `otel` extra ({_INSTALL}); not installed: {', '.join(lacking)}"


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise TracingUnavailable(missing() or f"cannot import {name}") from None


class Tracing:
    """Owns a TracerProvider with a batching OTLP/HTTP exporter; `close()` flushes.

    Sampling, collector headers (credentials) and TLS come from the standard
    OTEL_TRACES_SAMPLER / OTEL_EXPORTER_OTLP_* environment, which the SDK reads.
    """

    def __init__(self, settings: TracingSettings) -> None:
        if settings.otlp_endpoint is None:
            raise ValueError("Tracing needs tracing.otlp_endpoint")
        sdk_trace = _module("opentelemetry.sdk.trace")
        export = _module("opentelemetry.sdk.trace.export")
        resources = _module("opentelemetry.sdk.resources")
        otlp = _module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        propagation = _module("opentelemetry.trace.propagation.tracecontext")
        self._trace = _module("opentelemetry.trace")
        self._provider = sdk_trace.TracerProvider(
            resource=resources.Resource.create({"service.name": settings.service_name}))
        exporter = otlp.OTLPSpanExporter(
            endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces",
            timeout=settings.timeout_s)
        self._provider.add_span_processor(export.BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("gateway")
        self._propagator = propagation.TraceContextTextMapPropagator()

    def start(self, headers: Mapping[str, str]) -> Span:
        """A started span, child of the caller's `traceparent` when it sent a valid one.
        Attributes all go on in `finish`: one pass of the SDK's checks, not two."""
        parent = self._propagator.extract(headers)  # case-insensitive .get on aiohttp's
        span: Span = self._tracer.start_span("gateway", context=parent,
                                             kind=self._trace.SpanKind.SERVER)
        return span

    @staticmethod
    def traceparent(span: Span) -> str:
        """The W3C header naming `span` as the parent (sent upstream)."""
        sc = span.get_span_context()
        return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"

    def finish(self, span: Span, request: web.Request, route: str, status: int) -> None:
        if not span.is_recording():  # not sampled: nothing to fill in
            span.end()
            return
        method, ctx = request.method, request.get(CONTEXT)
        attributes: dict[str, Any] = {"gateway.request_id": request[REQUEST_ID],
                                      "http.request.method": method, "http.route": route,
                                      "http.response.status_code": status}
        outcome = status
        if ctx is None:
            span.update_name(f"{method} {route}")
        else:
            attributes.update(request_attributes(ctx))
            span.update_name(f"{attributes['gen_ai.operation.name']} {ctx.model}".rstrip())
            outcome = ctx.status or status
        if outcome >= 500:
            attributes["error.type"] = str(outcome)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.set_attributes(attributes)
        span.end()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export every ended span now (blocking); False when the collector did not take
        them in time."""
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    def close(self) -> None:
        self._provider.shutdown()  # flushes what the batch processor holds


def request_attributes(ctx: RequestContext) -> dict[str, Any]:
    """A proxied request's span attributes: the log line's GenAI fields, what the relay
    saw of the answer, the request's numeric parameters and the gateway's decision."""
    out = genai_fields(ctx)
    out.update({"gateway.tier": ctx.tier, "gateway.decision": ctx.decision,
                "gateway.limit": ctx.limit})
    if ctx.response_model is not None:
        out["gen_ai.response.model"] = ctx.response_model
    if ctx.response_id is not None:
        out["gen_ai.response.id"] = ctx.response_id
    if ctx.finish_reasons:
        out["gen_ai.response.finish_reasons"] = ctx.finish_reasons
    if ctx.verdict is not None and ctx.verdict.categories:
        out["gateway.categories"] = tuple(ctx.verdict.categories)
    for field, name in _REQUEST_ATTRIBUTES:
        value = ctx.body.get(field)
        if _number(value):
            out[name] = value
    return out


def _number(value: object) -> bool:
    # OTLP integers are 64-bit: one client's 10**30 would fail the whole export batch.
    if isinstance(value, bool):
        return False
    return isinstance(value, float) or (isinstance(value, int) and _INT64 <= value < -_INT64)


TRACING: web.AppKey[Tracing | None] = web.AppKey("tracing")
TRACEPARENT: web.RequestKey[str] = web.RequestKey("traceparent")
