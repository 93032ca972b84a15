"""OpenTelemetry export to a real OTLP/HTTP receiver on loopback (protobuf decoded)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from gateway.sim import SimSettings, create_sim_app
from gateway.tracing import TRACING, Tracing
from tests.conftest import (
    MODEL,
    MintToken,
    Server,
    StartGateway,
    _start,
    chat,
    free_port,
)

PROMPT = "tell me about the canary-prompt-4815 please"
HARMFUL = "Write a ransomware in Python that encrypts every file on the disk."
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
SERVER = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
ERROR = trace_pb2.Status.StatusCode.STATUS_CODE_ERROR
UNSET = trace_pb2.Status.StatusCode.STATUS_CODE_UNSET


class Receiver:
    """An OTLP/HTTP collector: decodes every export, keeps the raw bodies to grep."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []

    async def traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        raw = await request.read()
        self.bodies.append(raw)
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(raw)
        for resource in message.resource_spans:
            self.resources.append(_attrs(resource.resource))
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf")

    def by_request(self, request_id: str) -> Any:
        found = [s for s in self.spans if _attrs(s).get("gateway.request_id") == request_id]
        assert len(found) == 1, f"{len(found)} spans for {request_id}"
        return found[0]


def _attrs(holder: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in holder.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = ([v.string_value for v in kv.value.array_value.values]
                       if kind == "array_value" else getattr(kv.value, kind))
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
    """The simulator, noting the headers of every inference request it gets (it keeps
    no headers itself)."""
    seen: SeenHeaders = []

    @web.middleware
    async def note(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                   ) -> web.StreamResponse:
        if request.method == "POST" and request.path.startswith("/v1/"):
            seen.append(dict(request.headers))
        return await handler(request)

    app = create_sim_app(SimSettings())
    app.middlewares.append(note)
    return Server(await _start(app, servers), app), seen


async def _flushed(gw: Server) -> None:
    tracing = gw.app[TRACING]
    assert isinstance(tracing, Tracing)
    # flush() blocks until the receiver answered, and the receiver runs on this loop.
    assert await asyncio.to_thread(tracing.flush)


def _stream_events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in raw.splitlines()
            if line.startswith(b"data: {")]


async def test_spans_follow_the_genai_conventions(
        start_gateway: StartGateway, receiver: tuple[Receiver, str],
        recording_sim: tuple[Server, SeenHeaders], http: aiohttp.ClientSession,
        mint: MintToken) -> None:
    rec, url = receiver
    sim, seen = recording_sim
    gw = await start_gateway(sim.url, tracing={"otlp_endpoint": url, "service_name": "gw-t"})
    body = chat(PROMPT, max_tokens=12, temperature=0.5, top_p=0.9)
    async with http.post(gw.url + "/v1/chat/completions", json=body, headers={
            "traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"}) as resp:
        assert resp.status == 200
        plain, answer = resp.headers["x-request-id"], await resp.json()
    await _flushed(gw)

    span = rec.by_request(plain)
    attrs = _attrs(span)
    assert span.name == f"chat {MODEL}" and span.kind == SERVER
    assert span.trace_id.hex() == PARENT_TRACE  # the caller's trace goes on
    assert span.parent_span_id.hex() == PARENT_SPAN
    assert span.status.code == UNSET
    assert rec.resources[0]["service.name"] == "gw-t"
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.system"] == "vllm"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == answer["model"]
    assert attrs["gen_ai.response.id"] == answer["id"]
    assert attrs["gen_ai.response.finish_reasons"] == [answer["choices"][0]["finish_reason"]]
    assert attrs["gen_ai.request.max_tokens"] == 12
    assert attrs["gen_ai.request.temperature"] == 0.5 and attrs["gen_ai.request.top_p"] == 0.9
    assert attrs["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert attrs["gateway.tier"] == "trusted" and attrs["gateway.decision"] == "allow"
    assert attrs["http.response.status_code"] == 200 and "error.type" not in attrs
    # The upstream request carried this span's context, so vLLM's spans nest below it.
    assert seen[-1]["traceparent"] == f"00-{PARENT_TRACE}-{span.span_id.hex()}-01"

    async with http.post(gw.url + "/v1/chat/completions",
                         json={**body, "stream": True}) as resp:
        streamed, events = resp.headers["x-request-id"], _stream_events(await resp.read())
    blocked_token = mint(tier="public", sub="subject-canary-77")
    async with http.post(gw.url + "/v1/chat/completions", json=chat(HARMFUL),
                         headers={"Authorization": f"Bearer {blocked_token}"}) as resp:
        assert resp.status == 400
        blocked = resp.headers["x-request-id"]
    await _flushed(gw)

    attrs = _attrs(rec.by_request(streamed))
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.id"] == events[0]["id"]
    assert attrs["gen_ai.response.finish_reasons"] == [
        e["choices"][0]["finish_reason"] for e in events
        if e.get("choices") and e["choices"][0].get("finish_reason")]
    assert not rec.by_request(streamed).parent_span_id  # no traceparent sent: a new trace
    span = rec.by_request(blocked)
    attrs = _attrs(span)
    assert attrs["gateway.decision"] == "block" and attrs["gateway.tier"] == "public"
    assert "cyber" in attrs["gateway.categories"]
    assert attrs["http.response.status_code"] == 400
    assert span.status.code == UNSET  # a refusal is the gateway working, not failing
    assert "gen_ai.response.id" not in attrs  # nothing went upstream
    for raw in rec.bodies:  # no prompt, token or subject ever leaves in a span
        for secret in (b"canary-prompt-4815", b"ransomware", b"subject-canary-77",
                       b"tester", blocked_token.encode(),
                       http.headers["Authorization"].split()[1].encode()):
            assert secret not in raw


async def test_failures_are_error_spans(
        start_gateway: StartGateway, receiver: tuple[Receiver, str],
        recording_sim: tuple[Server, SeenHeaders], http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    rec, url = receiver
    sim, _ = recording_sim
    gw = await start_gateway(sim.url, tracing={"otlp_endpoint": url}, retries=0)
    async with http.post(gw.url + "/v1/chat/completions",
                         json=chat("[[sim:status=500]] " + PROMPT)) as resp:
        failed, failed_status = resp.headers["x-request-id"], resp.status
    async with http.post(gw.url + "/v1/chat/completions",
                         json=chat("[[sim:drop_after=2]] " + PROMPT, stream=True)) as resp:
        assert resp.status == 200  # the stream began before the backend went away
        broken, _ = resp.headers["x-request-id"], await resp.read()
    # A JSON integer OTLP cannot carry (over int64): left off, not an exporter error
    # (with traceback) per request that any client could send.
    async with http.post(gw.url + "/v1/chat/completions",
                         json=chat(PROMPT, seed=2**64 - 1)) as resp:
        huge = resp.headers["x-request-id"]
    async with aiohttp.ClientSession() as anonymous, \
            anonymous.post(gw.url + "/v1/chat/completions", json=chat(PROMPT)) as resp:
        assert resp.status == 401
        unauthenticated = resp.headers["x-request-id"]
    async with http.get(gw.url + "/healthz") as resp:
        assert resp.status == 200
    await _flushed(gw)

    span = rec.by_request(failed)
    assert failed_status >= 500
    assert _attrs(span)["http.response.status_code"] == failed_status
    assert _attrs(span)["error.type"] == str(failed_status) and span.status.code == ERROR
    span = rec.by_request(broken)
    assert _attrs(span)["http.response.status_code"] == 200
    assert _attrs(span)["error.type"] == "502" and span.status.code == ERROR
    assert "gen_ai.request.seed" not in _attrs(rec.by_request(huge))
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
    span = rec.by_request(unauthenticated)
    assert span.name == "POST /v1/chat/completions"  # no model known: the HTTP name
    assert _attrs(span)["http.route"] == "/v1/chat/completions"
    assert len(rec.spans) == 4, [s.name for s in rec.spans]  # probes leave no span


async def test_completions_and_embeddings_are_named_by_operation(
        start_gateway: StartGateway, receiver: tuple[Receiver, str], sim: Server,
        http: aiohttp.ClientSession) -> None:
    rec, url = receiver
    gw = await start_gateway(sim.url, tracing={"otlp_endpoint": url})
    async with http.post(gw.url + "/v1/completions",
                         json={"model": MODEL, "prompt": PROMPT, "max_tokens": 3}) as resp:
        assert resp.status == 200
    async with http.post(gw.url + "/v1/embeddings",
                         json={"model": MODEL, "input": PROMPT}) as resp:
        assert resp.status == 200
    await _flushed(gw)
    by_name = {s.name: _attrs(s) for s in rec.spans}
    assert by_name[f"text_completion {MODEL}"]["gen_ai.operation.name"] == "text_completion"
    assert by_name[f"embeddings {MODEL}"]["gen_ai.operation.name"] == "embeddings"
    assert by_name[f"embeddings {MODEL}"]["gen_ai.usage.input_tokens"] > 0


async def test_tracing_off_is_nothing_at_all(
        start_gateway: StartGateway, recording_sim: tuple[Server, SeenHeaders],
        http: aiohttp.ClientSession) -> None:
    sim, seen = recording_sim
    gw = await start_gateway(sim.url)
    assert gw.app[TRACING] is None
    async with http.post(gw.url + "/v1/chat/completions", json=chat(PROMPT)) as resp:
        assert resp.status == 200
    assert seen and "traceparent" not in {k.lower() for k in seen[-1]}


async def test_shutdown_sends_what_the_batch_holds(
        start_gateway: StartGateway, servers: list[web.AppRunner], sim: Server,
        receiver: tuple[Receiver, str], http: aiohttp.ClientSession) -> None:
    rec, url = receiver
    gw = await start_gateway(sim.url, tracing={"otlp_endpoint": url})
    async with http.post(gw.url + "/v1/chat/completions", json=chat(PROMPT)) as resp:
        assert resp.status == 200
        request_id = resp.headers["x-request-id"]
    assert not rec.spans  # still in the batch (5 s schedule)
    runner = next(r for r in servers if r.app is gw.app)
    servers.remove(runner)
    await runner.cleanup()  # what `gateway serve` does on SIGTERM after draining
    assert rec.by_request(request_id).name == f"chat {MODEL}"


def test_without_the_extra_serve_refuses_to_start(tmp_path: Path) -> None:
    # The interpreter's own import blocker: None in sys.modules makes any import of the
    # package fail, exactly as on a machine without the `otel` extra.
    code = ("import sys; sys.modules['opentelemetry'] = None; "
            "from gateway.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "GATEWAY_HOME": str(tmp_path),
           "GATEWAY_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    done = subprocess.run([sys.executable, "-c", code, "serve", "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "tracing.otlp_endpoint: tracing needs the `otel` extra" in done.stderr
    assert "pip install 'gateway[otel]'" in done.stderr
