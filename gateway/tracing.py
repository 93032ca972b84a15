"""Optional OpenTelemetry trace export: one span per request, GenAI attribute names.

Off unless `tracing.otlp_endpoint` (GATEWAY_OTLP_ENDPOINT) is set, and then it needs the
`otel` extra; without it the gateway refuses to start with a message saying so. The
SDK is imported only here, only then: with tracing off the per-request cost is one None
check in the middleware.

The span is the gateway's own request (kind SERVER: it is what a client called; the
GenAI semantic conventions' CLIENT spans belong to the caller's SDK, which may be the
parent through `traceparent`). Named "{gen_ai.operation.name} {gen_ai.request.model}"
as the conventions ask, with the request's GenAI attributes and the gateway's decision.
A W3C `traceparent` from the caller is the span's parent, and the upstream request
carries the span's own `traceparent`, so vLLM's spans (when it traces) hang below it.
Never on a span: prompts, completions, tokens, subjects.
"""

from __future__ import annotations

import importlib
from typing import Any

from aiohttp import web

from gateway.context import RequestContext
from gateway.settings import TracingSettings

OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
# Request parameters copied onto the span when the body has them (GenAI names).
_REQUEST_ATTRIBUTES = (("max_tokens", "gen_ai.request.max_tokens"),
                       ("temperature", "gen_ai.request.temperature"),
                       ("top_p", "gen_ai.request.top_p"),
                       ("seed", "gen_ai.request.seed"))


class TracingUnavailable(RuntimeError):
    """Tracing is configured but the `otel` extra is not installed."""


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise TracingUnavailable("tracing.otlp_endpoint is set but the `otel` extra is not "
                                 "installed (pip install 'gateway[otel]')") from None


class Tracing:
    """Owns a TracerProvider with a batching OTLP/HTTP exporter; `close()` flushes."""

    def __init__(self, settings: TracingSettings) -> None:
        assert settings.otlp_endpoint is not None
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

    def start(self, headers: Any) -> Any:
        """A started span, child of the caller's `traceparent` when it sent one."""
        parent = self._propagator.extract({k.lower(): v for k, v in headers.items()
                                           if k.lower() in ("traceparent", "tracestate")})
        return self._tracer.start_span("gateway", context=parent,
                                       kind=self._trace.SpanKind.SERVER)

    def traceparent(self, span: Any) -> str | None:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return carrier.get("traceparent")

    def finish(self, span: Any, ctx: RequestContext | None, route: str, status: int) -> None:
        attributes: dict[str, Any] = {"http.route": route, "http.response.status_code": status}
        if ctx is not None:
            operation = OPERATIONS.get(ctx.route, ctx.route)
            span.update_name(f"{operation} {ctx.model}" if ctx.model else operation)
            attributes.update(_genai(ctx, operation))
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export every ended span now (blocking); False when the collector did not take
        them in time."""
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    def close(self) -> None:
        self._provider.shutdown()  # flushes what the batch processor holds


def _genai(ctx: RequestContext, operation: str) -> dict[str, Any]:
    prompt = ctx.usage.prompt_tokens or ctx.prompt_tokens or 0
    out: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": "vllm",
        "gen_ai.request.model": ctx.model,
        "gen_ai.response.model": ctx.model,
        "gen_ai.usage.input_tokens": prompt,
        "gen_ai.usage.output_tokens": ctx.usage.completion_tokens,
        "gateway.request_id": ctx.request_id,
        "gateway.tier": ctx.tier,
        "gateway.decision": ctx.decision,
        "gateway.limit": ctx.limit,
    }
    if ctx.verdict is not None and ctx.verdict.categories:
        out["gateway.categories"] = list(ctx.verdict.categories)
    for field, name in _REQUEST_ATTRIBUTES:
        value = ctx.body.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


TRACING: web.AppKey[Tracing | None] = web.AppKey("tracing")
TRACEPARENT: web.RequestKey[str] = web.RequestKey("traceparent")
