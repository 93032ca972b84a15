"""Security gaps left by tests/test_security.py (smuggling, headers) and
tests/test_log_canaries.py (logs and the gateway's own error bodies): every /admin route
refuses missing, forged, expired and non-admin tokens; error bodies built from an
upstream's answer or from admin input never carry the prompt or the token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import (
    MODEL,
    MintToken,
    Server,
    StartGateway,
    chat,
    counter_totals,
    fake_backend,
    model_list,
)

PROMPT_CANARY = "canary-prompt-5d1e0b"


def _admin_routes(gateway: Server) -> list[tuple[str, str]]:
    """Every admin route the router serves, so a new one is covered without editing here."""
    found = {(r.method, r.resource.canonical) for r in gateway.app.router.routes()
             if r.resource is not None and r.resource.canonical.startswith("/admin/")
             and r.method != "HEAD"}
    assert len(found) >= 4, found  # policy, reload, audit, watermark detect at least
    return sorted(found)


def _error(raw: bytes) -> dict[str, Any]:
    body = orjson.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def _call(gateway: Server, method: str, path: str,
                headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.request(
            method, gateway.url + path, headers=headers, json={"text": "hello there"}) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_every_admin_route_refuses_callers_without_the_admin_scope(
        gateway: Server, mint: MintToken) -> None:
    admin = mint(tier="trusted", scopes=("admin",))
    refusals = {
        "no token": ({}, 401),
        "forged": ({"Authorization": f"Bearer {admin[:-6]}AAAAAA"}, 401),
        "expired admin": ({"Authorization": "Bearer " + mint(scopes=("admin",), ttl=-120)}, 401),
        "not a bearer": ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
        "trusted, no scope": ({"Authorization": "Bearer " + mint(scopes=())}, 403),
        "other scope": ({"Authorization": "Bearer " + mint(scopes=("read",))}, 403),
    }
    for method, path in _admin_routes(gateway):
        for name, (headers, expected) in refusals.items():
            status, raw, response_headers = await _call(gateway, method, path, headers)
            assert status == expected, (method, path, name, raw)
            error = _error(raw)
            if expected == 401:
                assert error["type"] == "authentication_error"
                assert response_headers["WWW-Authenticate"].startswith("Bearer")
            else:
                assert error["code"] == "admin_only"
            assert admin not in raw.decode()
        status, raw, _ = await _call(gateway, method, path, {"Authorization": f"Bearer {admin}"})
        assert status not in (401, 403, 500), (method, path, raw)  # the route is reachable


Handler = Callable[[web.Request], Awaitable[web.Response]]


async def _vllm_validation_error(request: web.Request) -> web.Response:
    """vLLM's answer to a body its pydantic model refuses: the input, printed."""
    body = await request.json()
    message = (f"1 validation error for ChatCompletionRequest\nmessages\n  Value error "
               f"[type=value_error, input_value={body.get('messages')!r}, input_type=list]")
    return web.json_response({"object": "error", "message": message,
                              "type": "BadRequestError", "param": None, "code": 400}, status=400)


async def _echoing_upstream(servers: list[web.AppRunner],
                            refuse: Handler = _vllm_validation_error) -> str:
    """A backend that is healthy and lists the model, and refuses every completion."""
    async def health(_: web.Request) -> web.Response:
        return web.Response()

    async def models(_: web.Request) -> web.Response:
        return model_list()

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    servers.append(runner)
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


@pytest.fixture
async def echoing(start_gateway: StartGateway,
                  servers: list[web.AppRunner]) -> AsyncIterator[Server]:
    yield await start_gateway(await _echoing_upstream(servers))


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_errors_that_echo_the_prompt_do_not_reach_the_client(
        echoing: Server, token: str, stream: bool) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http, http.post(
            echoing.url + "/v1/chat/completions",
            json=chat(f"tell me about {PROMPT_CANARY} please", stream=stream)) as resp:
        status, raw = resp.status, await resp.read()
    assert status == 400
    error = _error(raw)
    assert error["type"] == "invalid_request_error"
    assert PROMPT_CANARY not in raw.decode() and token not in raw.decode()
    assert "validation error" in error["message"]  # the rest of the message is kept


async def test_an_echo_in_another_shape_withholds_the_message(
        start_gateway: StartGateway, servers: list[web.AppRunner], token: str) -> None:
    """Where the quoted input has no known shape, the whole message is withheld."""
    async def refuse(request: web.Request) -> web.Response:
        text = (await request.json())["messages"][-1]["content"]
        return web.json_response({"error": {"message": f"cannot handle: {text.upper()}",
                                            "type": "BadRequestError", "code": 400}}, status=400)

    upstream = await _echoing_upstream(servers, refuse)
    gateway = await start_gateway(upstream)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.post(gateway.url + "/v1/chat/completions",
                      json=chat(f"a question on {PROMPT_CANARY}")) as resp:
        status, raw = resp.status, await resp.read()
    assert status == 400
    assert PROMPT_CANARY.upper() not in raw.decode().upper()
    assert "HTTP 400" in _error(raw)["message"]


async def test_detect_errors_do_not_echo_the_suspect_text(gateway: Server,
                                                          http: aiohttp.ClientSession) -> None:
    for body in ({"text": PROMPT_CANARY, "limit": PROMPT_CANARY}, {"text": [PROMPT_CANARY]},
                 {PROMPT_CANARY: 1}):
        async with http.post(gateway.url + "/admin/v1/watermark/detect", json=body) as resp:
            assert resp.status == 400
            assert PROMPT_CANARY not in await resp.text()


async def test_cookies_an_upstream_sets_are_never_sent_for_the_next_caller(
        start_gateway: StartGateway, servers: list[web.AppRunner], mint: MintToken) -> None:
    """A backend (or a balancer in front of it) that sets a cookie: the gateway's one
    upstream session must not keep it and send it with another caller's request. Named by
    host name: aiohttp's cookie jar keeps no cookie set by an IP address."""
    seen: list[str | None] = []

    async def backend(request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return model_list()
        response = web.Response()
        if request.path == "/v1/chat/completions":
            seen.append(request.headers.get("Cookie"))
            response = web.json_response({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hello"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        response.set_cookie("session", f"for-caller-{len(seen)}")
        return response

    url = (await fake_backend(backend, servers)).replace("127.0.0.1", "localhost")
    gateway = await start_gateway(url)
    async with aiohttp.ClientSession() as http:
        for caller in ("alice", "bob"):
            headers = {"Authorization": f"Bearer {mint(sub=caller)}"}
            async with http.post(gateway.url + "/v1/chat/completions", headers=headers,
                                 json=chat("hi")) as resp:
                assert resp.status == 200, await resp.text()
                assert "Set-Cookie" not in resp.headers
    assert seen == [None, None]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_backend_cannot_redirect_a_prompt_elsewhere(
        start_gateway: StartGateway, servers: list[web.AppRunner], token: str,
        stream: bool) -> None:
    """A 307 keeps the method and the body: followed, it would send the caller's prompt
    to whatever host the backend named. The gateway follows no redirect."""
    elsewhere: list[str] = []

    async def other_host(request: web.Request) -> web.Response:
        elsewhere.append(request.path)
        return web.json_response({"object": "list", "data": [{"id": MODEL}]})

    target = await fake_backend(other_host, servers)

    async def backend(request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return model_list()
        if request.path == "/v1/chat/completions":
            raise web.HTTPTemporaryRedirect(target + request.path)
        return web.Response()

    gateway = await start_gateway(await fake_backend(backend, servers))
    async with aiohttp.ClientSession() as http, http.post(
            gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
            json=chat(f"secret plans {PROMPT_CANARY}", stream=stream)) as resp:
        status, raw = resp.status, await resp.read()
    assert status == 502, raw
    assert _error(raw)["message"] == "The upstream server answered with a redirect"
    assert elsewhere == []
    kinds = await counter_totals(gateway.url, "gateway_upstream_failures", "kind")
    assert kinds.get("redirect", 0) >= 1
