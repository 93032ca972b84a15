"""OpenTelemetry export to a real OTLP/HTTP receiver on loopback (protobuf decoded)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.settings import SettingsError, load_settings
from gateway.sim import SimSettings, create_sim_app
from gateway.tracing import TRACING, Tracing
from tests.conftest import MODEL, Server, StartGateway, _start, chat

trace_pb2 = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="tracing needs the `otel` extra")

PROMPT = "tell me about the canary-prompt-4815 please"
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Receiver:
    """Collects exported spans and every raw body (to grep for what must not be there)."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.bodies: list[bytes] = []

    async def traces(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.bodies.append(raw)
        message = trace_pb2.ExportTraceServiceRequest()
        message.ParseFromString(raw)
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=trace_pb2.ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def by_request(self, request_id: str) -> Any:
        for span in self.spans:
            if _attrs(span).get("gateway.request_id") == request_id:
                return span
        raise AssertionError(f"no span for {request_id}")


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = (list(v.string_value for v in value.array_value.values)
                       if kind == "array_value" else getattr(value, kind))
    return out


@pytest.fixture
async def receiver(servers: list[web.AppRunner]) -> tuple[Receiver, str]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", rec.traces)
    return rec, await _start(app, servers)


SeenHeaders = list[dict[str, str]]


@pytest.fixture
async def recording_sim(servers: list[web.AppRunner]) -> tuple[Server, SeenHeaders]:
    """The simulator, noting the headers of every completion request it gets."""
    seen: SeenHeaders = []

    @web.middleware
    async def note(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                   ) -> web.StreamResponse:
        if request.path.startswith("/v1/chat"):
            seen.append(dict(request.headers))
        return await handler(request)

    app = create_sim_app(SimSettings())
    app.middlewares.append(note)
    return Server(await _start(app, servers), app), seen


async def test_one_span_per_request_with_genai_attributes(
        start_gateway: StartGateway, receiver: tuple[Receiver, str],
        recording_sim: tuple[Server, SeenHeaders], http: aiohttp.ClientSession) -> None:
    rec, url = receiver
    sim, seen = recording_sim
    gw = await start_gateway(sim.url, tracing={"otlp_endpoint": url})
    parent = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"
    body = chat(PROMPT, max_tokens=12, temperature=0.5)
    async with http.post(gw.url + "/v1/chat/completions", json=body,
                         headers={"traceparent": parent}) as resp:
        assert resp.status == 200
        plain = resp.headers["x-request-id"]
    async with http.post(gw.url + "/v1/chat/completions",
                         json={**body, "stream": True}) as resp:
        await resp.read()
        streamed = resp.headers["x-request-id"]
    async with http.post(gw.url + "/v1/chat/completions",
                         json=chat("[[sim:status=500]] " + PROMPT)) as resp:
        failed, failed_status = resp.headers["x-request-id"], resp.status
    tracing = gw.app[TRACING]
    assert isinstance(tracing, Tracing)
    assert await asyncio.to_thread(tracing.flush)

    span = rec.by_request(plain)
    attrs = _attrs(span)
    assert span.name == f"chat {MODEL}"
    assert span.trace_id.hex() == PARENT_TRACE  # the caller's trace continues
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.request.max_tokens"] == 12
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.usage.output_tokens"] > 0 and attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gateway.tier"] == "trusted" and attrs["http.response.status_code"] == 200
    # The upstream request carried this span's context, so vLLM's spans nest below it.
    assert seen[0]["traceparent"] == f"00-{PARENT_TRACE}-{span.span_id.hex()}-01"

    assert _attrs(rec.by_request(streamed))["gen_ai.usage.output_tokens"] > 0
    failed_span = rec.by_request(failed)
    assert _attrs(failed_span)["http.response.status_code"] == failed_status >= 500
    assert failed_span.status.code == 2  # STATUS_CODE_ERROR
    for raw in rec.bodies:  # no prompt and no token ever leaves in a span
        assert b"canary-prompt-4815" not in raw
        assert http.headers["Authorization"].split()[1].encode() not in raw


async def test_tracing_off_costs_nothing_and_bad_endpoints_are_refused(
        gateway: Server) -> None:
    assert gateway.app[TRACING] is None
    with pytest.raises(SettingsError, match=r"tracing\.otlp_endpoint: expected an http"):
        load_settings(env={"GATEWAY_OTLP_ENDPOINT": "collector:4318"})
    assert load_settings(env={"GATEWAY_OTLP_ENDPOINT": "http://c:4318"}).tracing \
        .otlp_endpoint == "http://c:4318"
