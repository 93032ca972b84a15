"""Backend pool against real simulators and a fake misbehaving backend."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.context import POOL
from tests.conftest import (
    MODEL,
    Server,
    StartGateway,
    StartSim,
    chat,
    fake_backend,
    free_port,
    model_list,
    wait_until,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _ask(http: aiohttp.ClientSession, gateway: Server, body: dict[str, Any]) -> int:
    async with http.post(gateway.url + "/v1/chat/completions", json=body) as resp:
        await resp.read()
        return resp.status


async def test_routes_by_model_discovered_from_each_backend(
        start_sim: StartSim, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    a = await start_sim(models=("model-a",))
    b = await start_sim(models=("model-b",))
    gateway = await start_gateway(a.url, b.url)
    for model, _backend in (("model-a", a), ("model-b", b), ("model-a", a)):
        assert await _ask(http, gateway, {**chat(), "model": model}) == 200
    assert (a.stats.completed, b.stats.completed) == (2, 1)
    async with http.get(gateway.url + "/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["model-a", "model-b"]


async def test_least_outstanding_requests_spreads_streams(
        start_sim: StartSim, start_gateway: StartGateway, token: str) -> None:
    a, b = await start_sim(), await start_sim()
    gateway = await start_gateway(a.url, b.url)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        responses = []
        for _ in range(6):
            resp = await http.post(gateway.url + "/v1/chat/completions",
                                   json=chat("[[sim:tps=5]]", stream=True, max_tokens=100))
            await resp.content.readline()
            responses.append(resp)
        assert (a.stats.in_flight, b.stats.in_flight) == (3, 3)
        for resp in responses:
            resp.close()


async def _fake_backend(servers: list[web.AppRunner], health: Handler,
                        **posts: Handler) -> str:
    """A backend serving MODEL: `health` answers /health, `posts` name POST paths."""
    async def models(_: web.Request) -> web.Response:
        return model_list()

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    for path, handler in posts.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    servers.append(runner)
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def _flaky_backend(servers: list[web.AppRunner], calls: list[int]) -> str:
    """Healthy to probes, 503 to every completion: only passive ejection can catch it."""
    async def health(_: web.Request) -> web.Response:
        return web.Response()

    async def fail(_: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"error": {"message": "overloaded", "code": 503}}, status=503)

    return await _fake_backend(servers, health, **{"/v1/chat/completions": fail})


async def test_passive_ejection_then_recovery(start_sim: StartSim, start_gateway: StartGateway,
                                              servers: list[web.AppRunner],
                                              http: aiohttp.ClientSession) -> None:
    calls: list[int] = []
    flaky = await _flaky_backend(servers, calls)
    good = await start_sim()
    gateway = await start_gateway(flaky, good.url, health={
        "interval_s": 0.1, "failures_to_eject": 2, "eject_s": 0.5})
    for _ in range(20):
        assert await _ask(http, gateway, chat(max_tokens=2)) == 200  # retried on `good`
    assert len(calls) == 2, "ejected after two failures"
    await asyncio.sleep(0.8)  # ejection over: probes pass, it is back in rotation
    # Ties between idle backends are broken at random: ask until it is picked (ten asks
    # missed it one time in a thousand), within a bound a backend left out would hit.
    for _ in range(100):
        await _ask(http, gateway, chat(max_tokens=2))
        if len(calls) > 2:
            break
    assert len(calls) > 2


async def test_all_down_then_one_returns(start_sim: StartSim, start_gateway: StartGateway,
                                         http: aiohttp.ClientSession) -> None:
    port = free_port()
    gateway = await start_gateway(f"http://127.0.0.1:{port}")
    async with http.get(gateway.url + "/readyz") as resp:
        assert resp.status == 503
    assert await _ask(http, gateway, chat()) == 503
    await start_sim(port=port)
    await wait_until(lambda: gateway.app[POOL].ready)
    async with http.get(gateway.url + "/readyz") as resp:
        assert resp.status == 200
    assert await _ask(http, gateway, chat()) == 200


async def _metric_value(http: aiohttp.ClientSession, gateway: Server, name: str) -> float:
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)


@pytest.mark.parametrize("panic_routing", [True, False])
async def test_failures_a_client_provokes_do_not_take_the_only_backend_away(
        start_sim: StartSim, start_gateway: StartGateway, http: aiohttp.ClientSession,
        panic_routing: bool) -> None:
    sim = await start_sim()
    gateway = await start_gateway(sim.url, retries=0, health={
        "interval_s": 0.1, "failures_to_eject": 2, "eject_s": 30,
        "panic_routing": panic_routing})
    for _ in range(2):  # two upstream failures eject the only backend
        assert await _ask(http, gateway, chat("[[sim:status=503]] hi")) == 503
    assert not gateway.app[POOL].backends[0].available(time.monotonic())
    async with http.get(gateway.url + "/readyz") as resp:
        ready = resp.status
    served = await _ask(http, gateway, chat(max_tokens=2))
    routed = await _metric_value(http, gateway, "gateway_upstream_panic_routed_total")
    # The gauge an alert watches says whether the backend takes requests.
    shown = await _metric_value(http, gateway, "gateway_upstream_healthy")
    if panic_routing:  # the probe still passes: the backend keeps serving everyone else
        assert (ready, served, shown) == (200, 200, 1)
        assert routed > 0  # upstream calls (the completion, and a /tokenize before it)
    else:
        assert (ready, served, routed, shown) == (503, 503, 0, 0)


async def _backend_with_switchable_health(servers: list[web.AppRunner],
                                          status: list[int]) -> str:
    """/health answers status[0], which the test changes."""
    async def health(_: web.Request) -> web.Response:
        return web.Response(status=status[0])

    return await _fake_backend(servers, health)


async def test_a_backend_is_down_only_after_consecutive_failed_probes(
        start_gateway: StartGateway, servers: list[web.AppRunner]) -> None:
    """A busy backend may miss one probe; dropping it at once would refuse everyone."""
    status = [200]
    url = await _backend_with_switchable_health(servers, status)
    gateway = await start_gateway(url, health={
        "interval_s": 0.05, "probe_timeout_s": 0.5, "failed_probes_to_down": 4})
    backend = gateway.app[POOL].backends[0]
    await wait_until(lambda: backend.healthy)
    status[0] = 503
    await wait_until(lambda: backend.failed_probes >= 1)
    seen_up_while_failing = []
    while backend.failed_probes < 4:
        seen_up_while_failing.append(backend.healthy and backend.failed_probes > 0)
        await asyncio.sleep(0.01)
    assert seen_up_while_failing and all(seen_up_while_failing)
    assert not backend.healthy and not gateway.app[POOL].ready
    status[0] = 200
    await wait_until(lambda: backend.healthy)  # one passing probe brings it back


async def _errors_by_kind(http: aiohttp.ClientSession, gateway: Server) -> dict[str, float]:
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    return {sample.labels["kind"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "gateway_upstream_errors_total"}


async def test_upstream_errors_are_counted_by_what_went_wrong(
        start_sim: StartSim, start_gateway: StartGateway, http: aiohttp.ClientSession,
        servers: list[web.AppRunner]) -> None:
    sim = await start_sim()
    sim_runner = servers[-1]
    gateway = await start_gateway(sim.url, retries=0, health={
        "interval_s": 60, "failures_to_eject": 1000, "panic_routing": True})
    assert await _ask(http, gateway, chat("[[sim:reset]] hi")) == 502
    assert await _errors_by_kind(http, gateway) == {"reset": 1}
    await sim_runner.cleanup()  # nothing listens on the backend's port any more
    servers.remove(sim_runner)
    assert await _ask(http, gateway, chat("hi")) == 502
    assert await _errors_by_kind(http, gateway) == {"reset": 1, "connect": 1}


async def test_an_upstream_unreachable_from_the_start_is_reported(
        start_gateway: StartGateway, caplog: pytest.LogCaptureFixture) -> None:
    """The gateway said it was ready and logged nothing (only /readyz told)."""
    dead = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.INFO, logger="gateway.upstream"):
        await start_gateway(dead)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"upstream {dead} is unhealthy (ClientConnectorError)"]


async def test_user_info_in_an_upstream_url_is_used_but_never_shown(
        start_sim: StartSim, start_gateway: StartGateway, http: aiohttp.ClientSession,
        servers: list[web.AppRunner], caplog: pytest.LogCaptureFixture) -> None:
    """A backend behind Basic auth: the password goes upstream, and nowhere else (the
    unauthenticated /metrics, the logs, dashboards and alert texts built on them)."""
    seen: list[str] = []

    async def guarded(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        if request.path == "/health":
            return web.Response()
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": MODEL,
                                                                  "object": "model"}]})
        return web.json_response({"error": {"message": "no", "type": "x", "code": 503}},
                                 status=503)

    port = (await fake_backend(guarded, servers)).rsplit(":", 1)[1]
    with caplog.at_level(logging.INFO):
        gateway = await start_gateway(f"http://admin:S3cr3tPW@127.0.0.1:{port}", retries=0,
                                      health={"failures_to_eject": 1, "panic_routing": True})
        assert await _ask(http, gateway, chat("hi")) == 503  # a failure: logged, ejected
        for _ in range(3):  # panic routing: the only backend, ejected, still asked
            assert await _ask(http, gateway, chat("hi")) == 503
    assert seen and set(seen) == {"Basic YWRtaW46UzNjcjN0UFc="}  # admin:S3cr3tPW
    ejected = [r for r in caplog.records if "ejected" in r.getMessage()]
    assert len(ejected) == 1  # not one line per failure while it is out
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    healthy = [s.labels for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "gateway_upstream_healthy"]
    assert healthy == [{"upstream": f"http://admin:***@127.0.0.1:{port}"}]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"admin:***@127.0.0.1:{port}" in logged
    assert "S3cr3tPW" not in text and "S3cr3tPW" not in logged


async def _backend_with_switchable_listing(servers: list[web.AppRunner],
                                           listing: list[web.Response]) -> str:
    """/v1/models answers a copy of listing[0], which the test changes; /health is 200."""
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/models":
            answer = listing[0]
            return web.Response(body=answer.body, status=answer.status,
                                content_type="application/json")
        return web.Response()

    return await fake_backend(handler, servers)


def _models(*ids: str) -> web.Response:
    return web.json_response({"object": "list",
                              "data": [{"id": i, "object": "model"} for i in ids]})


@pytest.mark.parametrize("bad", [
    web.json_response({"object": "list", "data": None}),
    web.json_response({"object": "list", "data": 5}),
    web.Response(status=500, text="oops"),
    web.Response(text="<html>")])
async def test_a_bad_model_listing_keeps_the_models_and_the_probing(
        start_gateway: StartGateway, servers: list[web.AppRunner], bad: web.Response) -> None:
    """`"data": null` (a server with nothing loaded) stopped the health checker for good,
    for every backend: a dead backend stayed "healthy" and new models were never seen. One
    500 from /v1/models made the backend's models vanish (503 for them) while it still
    counted as healthy. Now either fails the probe and the last good list stays."""
    listing = [_models(MODEL)]
    url = await _backend_with_switchable_listing(servers, listing)
    gateway = await start_gateway(url, health={
        "interval_s": 0.05, "probe_timeout_s": 0.5, "failed_probes_to_down": 3})
    pool, backend = gateway.app[POOL], gateway.app[POOL].backends[0]
    await wait_until(lambda: pool.knows(MODEL) and backend.healthy)
    listing[0] = bad
    await wait_until(lambda: backend.failed_probes >= 1)
    assert pool.knows(MODEL) and backend.healthy  # one bad answer: nothing lost
    await wait_until(lambda: not backend.healthy)  # it keeps failing: down, and it shows
    assert pool.knows(MODEL)
    listing[0] = _models(MODEL, "brand-new-model")
    await wait_until(lambda: backend.healthy and pool.knows("brand-new-model"))


async def test_ejection_failures_and_load_show_per_backend(
        start_sim: StartSim, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    """While a backend was ejected nothing said so (gateway_upstream_healthy stays 1 under
    panic routing), failures had no backend label, and in-flight load per backend was
    invisible."""
    sim = await start_sim()
    gateway = await start_gateway(sim.url, retries=0, health={
        "interval_s": 0.05, "failures_to_eject": 2, "eject_s": 0.5, "panic_routing": True})

    async def samples(name: str) -> dict[tuple[str, ...], float]:
        async with http.get(gateway.url + "/metrics") as resp:
            text = await resp.text()
        return {tuple(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == name}

    at = (("upstream", sim.url),)

    assert await samples("gateway_upstream_ejected") == {at: 0}
    for _ in range(2):
        assert await _ask(http, gateway, chat("[[sim:status=503]] hi")) == 503
    assert await samples("gateway_upstream_ejected") == {at: 1}
    assert await samples("gateway_upstream_failures_total") == {
        (("kind", "status_503"), *at): 2}
    slow = asyncio.create_task(_ask(http, gateway, chat("[[sim:ttft=0.5]] hi")))
    await asyncio.sleep(0.2)
    assert await samples("gateway_upstream_outstanding") == {at: 1}
    assert await slow == 200
    assert await samples("gateway_upstream_outstanding") == {at: 0}
    await asyncio.sleep(0.6)  # the ejection ends at the next passing probe
    assert await samples("gateway_upstream_ejected") == {at: 0}


async def test_no_healthy_upstream_says_when_to_retry(
        start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(f"http://127.0.0.1:{free_port()}")
    async with http.post(gateway.url + "/v1/chat/completions", json=chat()) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"


async def test_an_upstream_given_with_v1_is_the_same_backend(
        start_sim: StartSim, start_gateway: StartGateway, http: aiohttp.ClientSession) -> None:
    """`http://vllm:8000/v1` was taken as is: /v1/health answered 404, never ready."""
    sim = await start_sim()
    gateway = await start_gateway(sim.url + "/v1/")
    assert gateway.app[POOL].backends[0].url == sim.url
    assert await _ask(http, gateway, chat(max_tokens=2)) == 200
