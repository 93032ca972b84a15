"""The HTTP surface: error shapes and statuses, request ids, health and metrics."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MintToken, Server, StartGateway, chat, free_port, requests_total


def _is_openai_error(raw: bytes) -> dict[str, object]:
    body = orjson.loads(raw)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "path", "data", "headers", "status", "code"),
    [
        ("POST", "/v1/chat/completions", b"{not json", {}, 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"\xff\xfe{}", {}, 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", {}, 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"{}", {"Content-Type": "text/plain"}, 415,
         "unsupported_media_type"),
        ("POST", "/v1/chat/completions", b'{"model": "m"}', {}, 400, "invalid_value"),
        ("GET", "/v1/nope", b"", {}, 404, "not_found"),
        ("GET", "/v1/chat/completions", b"", {}, 405, "method_not_allowed"),
        ("POST", "/v1/chat/completions", b" " * (64 * 1024 + 1), {}, 413, "request_too_large"),
        ("POST", "/v1/chat/completions",
         b'{"a":' * 2000 + b"1" + b"}" * 2000, {}, 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"model": "m", "n": 1' + b"0" * 30 + b"}", {}, 400,
         "invalid_value"),
    ],
)
async def test_client_mistakes_get_openai_errors(
        start_gateway: StartGateway, sim: Server, http: aiohttp.ClientSession, method: str,
        path: str, data: bytes, headers: dict[str, str], status: int, code: str) -> None:
    gateway = await start_gateway(sim.url, max_body_bytes=64 * 1024)
    headers = {"Content-Type": "application/json", **headers}
    async with http.request(method, gateway.url + path, data=data, headers=headers) as resp:
        assert resp.status == status
        assert resp.headers["x-request-id"]
        assert _is_openai_error(await resp.read())["code"] == code


async def test_body_just_under_limit_is_accepted(start_gateway: StartGateway, sim: Server,
                                                 http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(sim.url, max_body_bytes=64 * 1024)
    body = orjson.dumps(chat(max_tokens=2))
    padded = body[:-1] + b" " * (64 * 1024 - len(body)) + b"}"
    assert len(padded) == 64 * 1024
    async with http.post(gateway.url + "/v1/chat/completions", data=padded,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(("incoming", "kept"), [("abc-123", True), ("bad id!", False),
                                                ("x" * 200, False)])
async def test_request_id_kept_when_valid(gateway: Server, http: aiohttp.ClientSession,
                                          incoming: str, kept: bool) -> None:
    for stream in (False, True):
        async with http.post(gateway.url + "/v1/chat/completions",
                             json=chat(stream=stream, max_tokens=2),
                             headers={"x-request-id": incoming}) as resp:
            await resp.read()
            assert (resp.headers["x-request-id"] == incoming) is kept
            assert resp.headers["x-request-id"]


async def test_health_ready_and_metrics(gateway: Server, http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200
    async with http.get(gateway.url + "/readyz") as resp:
        ready = await resp.json()
        assert resp.status == 200 and ready["ready"] is True
        assert ready["checks"] == {"accepting": True, "policy": True, "upstream": True,
                                   "classifier": True}
    async with http.post(gateway.url + "/v1/chat/completions", json=chat()) as resp:
        await resp.read()
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = [s for s in families["gateway_requests"].samples
                if s.name == "gateway_requests_total"
                and s.labels["route"] == "/v1/chat/completions"]
    assert requests and requests[0].labels["status"] == "200"
    assert requests[0].labels["model"] == "sim-llama-3-8b-instruct"
    assert requests[0].value == 1
    counts = [s for s in families["gateway_request_duration_seconds"].samples
              if s.name.endswith("_count") and s.labels["route"] == "/v1/chat/completions"]
    assert counts[0].value == 1


async def test_unknown_model_label_is_bounded(gateway: Server,
                                              http: aiohttp.ClientSession) -> None:
    async with http.post(gateway.url + "/v1/chat/completions",
                         json={**chat(), "model": "attacker-chosen-123"}) as resp:
        assert resp.status == 404
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    assert "attacker-chosen-123" not in text
    assert 'model="other"' in text


async def test_a_refused_field_is_counted_under_the_callers_tier(
        gateway: Server, mint: MintToken) -> None:
    """A 400 from a bad field comes before the tier stage; dashboards by tier still see it,
    and an unconfigured tier claim stays "-" (labels stay bounded)."""
    for tier in ("public", "made-up"):
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {mint(tier=tier)}"}) as h, \
                h.post(gateway.url + "/v1/chat/completions",
                       json=chat(temperature=-1)) as resp:
            assert resp.status == 400
    assert await requests_total(gateway.url, "tier", status="400") == {"public": 1, "-": 1}


async def test_a_stream_that_fails_after_its_200_is_counted_with_its_error(
        gateway: Server, http: aiohttp.ClientSession) -> None:
    """The client saw 200 and then an error event: requests_total says what the log and the
    audit record say (502), so error ratios see the failure, and the prompt the backend read
    is in tokens_total although no usage chunk came."""
    body = {**chat("a story [[sim:drop_after=3]]"), "stream": True}
    async with http.post(gateway.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert b'"bad_gateway"' in await resp.read()
    assert await requests_total(gateway.url, "status", route="/v1/chat/completions") == {
        "502": 1}
    async with http.get(gateway.url + "/metrics") as resp:
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    tokens = {s.labels["direction"]: s.value for s in families["gateway_tokens"].samples
              if s.name == "gateway_tokens_total"}
    assert tokens["completion"] >= 1 and tokens["prompt"] >= 5


@pytest.mark.parametrize("required", [True, False])
async def test_readiness_without_a_healthy_upstream(
        start_gateway: StartGateway, http: aiohttp.ClientSession, required: bool) -> None:
    """`readiness_requires_upstream: false` keeps the gateway ready while every upstream is
    down, so it answers its own 503 rather than leaving the balancer without endpoints."""
    gateway = await start_gateway(f"http://127.0.0.1:{free_port()}",
                                  readiness_requires_upstream=required)
    async with http.get(gateway.url + "/readyz") as resp:
        ready = await resp.json()
        assert ready["checks"]["upstream"] is False
        assert (resp.status, ready["ready"]) == ((503, False) if required else (200, True))
    async with http.post(gateway.url + "/v1/chat/completions", json=chat()) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["type"]
