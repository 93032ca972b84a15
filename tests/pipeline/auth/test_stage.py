"""AuthStage: the Authorization header to a Principal, or a 401 a client can act on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.context import Principal, RequestContext
from gateway.errors import GatewayError, Unauthorized
from gateway.pipeline.auth.stage import AuthStage
from gateway.pipeline.auth.verify import REASONS
from tests.pipeline.auth.helpers import ATTACKER, claims, sign, static_verifier, token

INVALID = 'Bearer error="invalid_token"'


def stage(counted: list[str] | None = None, **settings: Any) -> AuthStage:
    return AuthStage(static_verifier(**settings), counted.append if counted is not None else None)


async def refusal(auth: AuthStage, authorization: list[str],
                  query_has_token: bool = False) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        await auth.authenticate(authorization, query_has_token)
    return caught.value


async def test_bearer_token_becomes_a_principal() -> None:
    auth = stage()
    for value in (f"Bearer {token('ed')}", f"bearer {token('ed')}", f"  BEARER   {token('ed')} "):
        assert (await auth.authenticate([value], False)).sub == "alice"


async def test_missing_token_challenge_has_no_error_attribute() -> None:
    counted: list[str] = []
    error = await refusal(stage(counted), [])
    assert error.http_status == 401
    assert error.headers == {"WWW-Authenticate": 'Bearer realm="gateway"'}
    assert error.body()["error"]["type"] == "authentication_error"
    assert counted == ["missing"]


EXPIRED = token("ed", exp=int(time.time()) - 100, sub="who-am-i")


@pytest.mark.parametrize("authorization, query, reason", [
    (["Basic dXNlcjpwYXNz"], False, "malformed"),
    (["Bearer"], False, "malformed"),
    (["Bearer "], False, "malformed"),
    ([""], False, "malformed"),
    ([f"Token {token('ed')}"], False, "malformed"),
    ([f"Bearer {token('ed')}", f"Bearer {token('ed')}"], False, "multiple_headers"),
    ([f"Bearer {token('ed')}", "Basic x"], False, "multiple_headers"),
    ([], True, "query_token"),
    ([f"Bearer {token('ed')}"], True, "query_token"),
    ([f"Bearer {EXPIRED}"], False, "expired"),
    ([f"Bearer {token('ed', padding='x' * 9000)}"], False, "too_large"),
    ([f"Bearer {sign(ATTACKER, 'EdDSA', claims(), {'kid': 'ed'})}"], False, "bad_signature"),
    ([f"Bearer {token('ed', headers={'crit': ['exp']})}"], False, "crit"),
])
async def test_refusals_are_401_invalid_token_and_counted(authorization: list[str], query: bool,
                                                          reason: str) -> None:
    counted: list[str] = []
    error = await refusal(stage(counted), authorization, query)
    assert counted == [reason]
    assert error.http_status == 401 and error.headers == {"WWW-Authenticate": INVALID}
    body = error.body()["error"]
    assert body["type"] == "authentication_error" and body["message"]
    for value in authorization:  # the message never echoes any part of the token
        for part in value.strip().partition(" ")[2].split("."):
            assert len(part) < 4 or part not in body["message"]


async def test_every_reason_has_a_message() -> None:
    from gateway.pipeline.auth.stage import refusal as make

    for reason in REASONS:
        assert make(reason).message


async def test_check_wants_an_unexpired_principal() -> None:
    auth = stage()
    ctx = RequestContext(request_id="r", route="chat", body={}, model="m")
    decision = await auth.check(ctx)
    assert not decision.allowed and isinstance(decision.error, Unauthorized)
    ctx.principal = Principal(sub="a", tier="t", expires_at=time.time() + 60)
    assert (await auth.check(ctx)).allowed
    ctx.principal = Principal(sub="a", tier="t", expires_at=time.time() - 1)
    assert not (await auth.check(ctx)).allowed
    assert auth.name == "auth"


# --- over a real socket ------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A tiny app that authenticates as the gateway's routes do and renders errors."""
    auth = stage()

    async def whoami(request: web.Request) -> web.Response:
        try:
            principal = await auth.authenticate(request.headers.getall("Authorization", []),
                                                "access_token" in request.query)
        except GatewayError as exc:
            return web.Response(status=exc.http_status, body=exc.to_json(),
                                headers=exc.headers, content_type="application/json")
        return web.json_response({"sub": principal.sub, "tier": principal.tier})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/whoami"
    await runner.cleanup()


async def test_over_http(server: str) -> None:
    good = token("ed")
    async with aiohttp.ClientSession() as http:
        async with http.get(server, headers={"Authorization": f"Bearer {good}"}) as resp:
            assert resp.status == 200 and (await resp.json())["sub"] == "alice"
        async with http.get(server) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
        two = CIMultiDict([("Authorization", f"Bearer {good}"),
                           ("Authorization", f"Bearer {good}")])
        async with http.get(server, headers=two) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == INVALID
            assert "one Authorization header" in (await resp.json())["error"]["message"]
        async with http.get(server, params={"access_token": good},
                            headers={"Authorization": f"Bearer {good}"}) as resp:
            raw = await resp.read()
            assert resp.status == 401 and good.encode() not in raw
            assert orjson.loads(raw)["error"]["message"].startswith("Tokens in the URL")


@pytest.mark.parametrize("bearer, reason, message", [
    (token("ed", exp="60"), "bad_claims",
     "The token's 'exp' claim must be a number (a NumericDate)"),
    (token("ed", nbf=str(int(time.time()) + 3600)), "bad_claims",
     "The token's 'nbf' claim must be a number (a NumericDate)"),
    (token("ed", exp=None), "bad_claims", "The token lacks the required claim 'exp'"),
    (token("ed", sub=None), "bad_claims", "The token lacks the required claim 'sub'"),
    (token("ed", tier=None), "bad_claims", "The token lacks the required claim 'tier'"),
    (token("ed", tier=""), "bad_claims", "The token's 'tier' claim must be a non-empty string"),
    ("abc.def.ghi", "malformed", "The token cannot be decoded"),
    ("not-a-jwt", "malformed", "The Authorization header must be 'Bearer <token>'"),
])
async def test_a_refusal_says_which_claim_or_that_the_token_cannot_be_decoded(
        server: str, bearer: str, reason: str, message: str) -> None:
    """A string `exp` read as long expired; a missing claim went unnamed; an undecodable
    token was told its header was malformed."""
    async with aiohttp.ClientSession() as http, http.get(
            server, headers={"Authorization": f"Bearer {bearer}"}) as resp:
        assert resp.status == 401
        said = (await resp.json())["error"]["message"]
    assert said.startswith(message), said
    counted: list[str] = []
    assert (await refusal(stage(counted), [f"Bearer {bearer}"])).message == said
    assert counted == [reason]
