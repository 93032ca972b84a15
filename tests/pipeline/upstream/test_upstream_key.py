"""vLLM started with --api-key: the gateway sends its key (GATEWAY_SECRET_UPSTREAM_API_KEY)
on every call to a backend, and a backend that refuses it is the gateway's fault (502),
never the caller's 401."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from tests.conftest import (
    MODEL,
    StartGateway,
    StartSim,
    chat,
    counter_totals,
    fake_backend,
    model_list,
)

KEY = "upstream-key-7c1f0e"


async def test_the_gateway_reaches_a_backend_that_needs_a_key(
        start_sim: StartSim, start_gateway: StartGateway, token: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SECRET_UPSTREAM_API_KEY", KEY)
    sim = await start_sim(api_key=KEY)
    gateway = await start_gateway(sim.url)
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key=token,
                           max_retries=0) as sdk:
        models = await sdk.models.list()
        assert [m.id for m in models.data] == [MODEL]
        answer = await sdk.chat.completions.create(model=MODEL, max_tokens=4,
                                                   messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
        stream = await sdk.chat.completions.create(model=MODEL, max_tokens=4, stream=True,
                                                   messages=[{"role": "user", "content": "hi"}])
        assert [chunk async for chunk in stream]


async def test_a_backend_refusing_the_gateways_key_is_a_502(
        start_gateway: StartGateway, servers: list[web.AppRunner], token: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SECRET_UPSTREAM_API_KEY", "not-the-right-one")
    seen: list[str] = []

    async def backend(request: web.Request) -> web.Response:
        if request.path == "/v1/models":
            return model_list()
        if request.path == "/v1/chat/completions":
            seen.append(request.headers.get("Authorization", ""))
            return web.json_response({"error": "Unauthorized"}, status=401)
        return web.Response()

    gateway = await start_gateway(await fake_backend(backend, servers))
    async with aiohttp.ClientSession() as http, http.post(
            gateway.url + "/v1/chat/completions", json=chat("hi"),
            headers={"Authorization": f"Bearer {token}"}) as resp:
        status, raw = resp.status, await resp.read()
    assert status == 502
    error = orjson.loads(raw)["error"]
    assert error["message"] == "The upstream server refused the gateway's credentials"
    assert "not-the-right-one" not in raw.decode()
    assert seen and all(h == "Bearer not-the-right-one" for h in seen)
    kinds = await counter_totals(gateway.url, "gateway_upstream_failures", "kind")
    assert kinds.get("unauthorized", 0) >= 1


async def test_without_a_key_no_authorization_goes_upstream(
        start_gateway: StartGateway, servers: list[web.AppRunner], token: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own token is the gateway's business: it never reaches a backend."""
    monkeypatch.delenv("GATEWAY_SECRET_UPSTREAM_API_KEY", raising=False)
    seen: list[str | None] = []

    async def backend(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.path == "/v1/models":
            return model_list()
        if request.path == "/v1/chat/completions":
            return web.json_response({
                "id": "c", "object": "chat.completion", "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hello"}}]})
        return web.Response()

    gateway = await start_gateway(await fake_backend(backend, servers))
    async with aiohttp.ClientSession() as http, http.post(
            gateway.url + "/v1/chat/completions", json=chat("hi"),
            headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
    assert seen and all(h is None for h in seen)
