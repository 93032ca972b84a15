"""Hand-written hostile requests: each gets its documented status in OpenAI's error shape,
never a 500, and the gateway keeps serving (issue 9; schemathesis covers the rest).

Bodies just under and just over max_body_bytes (200 / 413) are in tests/test_routes.py."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import MODEL, Process, Server, StartGateway, chat

CHAT = "/v1/chat/completions"


def _error(raw: bytes) -> dict[str, Any]:
    body = orjson.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def _post(http: aiohttp.ClientSession, url: str, data: bytes,
                content_type: str | None = "application/json") -> tuple[int, bytes]:
    headers = {"Content-Type": content_type} if content_type else {}
    async with http.post(url + CHAT, data=data, headers=headers) as resp:
        return resp.status, await resp.read()


# One gateway per group, each case named in its assertion: a gateway per case would spend
# most of the suite's time starting gateways.
MALFORMED = [
    ("float beyond double", b'{"model": "M", "messages": [], "max_tokens": 1e400}'),
    ("5000-digit integer", b'{"model": "M", "max_tokens": ' + b"9" * 5000 + b"}"),
    ("100k nested arrays", b"[" * 100_000 + b"]" * 100_000),
    ("100k nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ("lone surrogate escape", b'{"model": "M", "messages": [{"role": "user", '
                              b'"content": "\\ud800"}]}'),
    ("invalid UTF-8 in a string", b'{"model": "M", "messages": [{"role": "user", '
                                  b'"content": "\xc3\x28"}]}'),
    ("NaN literal", b'{"model": "M", "temperature": NaN}'),
    ("trailing garbage", b'{"model": "M"} {"model": "M"}'),
    ("empty body", b""),
]


async def test_malformed_json_is_400_invalid_json(gateway: Server,
                                                  http: aiohttp.ClientSession) -> None:
    for name, data in MALFORMED:
        status, raw = await _post(http, gateway.url,
                                  data.replace(b'"M"', f'"{MODEL}"'.encode()))
        assert status == 400, name
        assert _error(raw)["code"] == "invalid_json", name


def _nested(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


# Fields the gateway forwards: a value that parses (orjson reads 1024 levels) but that the
# gateway cannot write back upstream (254) used to fail there with a 500.
FORWARDED: dict[str, Callable[[object], dict[str, Any]]] = {
    "tools": lambda deep: chat("hi", tools=[{"type": "function", "function": {
        "name": "f", "parameters": deep}}]),
    "response_format": lambda deep: chat("hi", response_format={
        "type": "json_schema", "json_schema": deep}),
    "content part": lambda deep: {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "extra": deep}]}]},
    "message field": lambda deep: {"model": MODEL, "messages": [
        {"role": "user", "content": "hi", "name": deep}]},
    "embedding input": lambda deep: {"model": MODEL, "input": [deep]},
}


async def test_nesting_too_deep_to_forward_is_400(gateway: Server,
                                                 http: aiohttp.ClientSession) -> None:
    for field in FORWARDED:
        await _deep_case(gateway, http, field)


async def _deep_case(gateway: Server, http: aiohttp.ClientSession, field: str) -> None:
    path = "/v1/embeddings" if field == "embedding input" else CHAT
    async with http.post(gateway.url + path, data=orjson.dumps(
            FORWARDED[field](_nested(200))), headers={"Content-Type": "application/json"}
                         ) as resp:  # deep, but still within what can be forwarded
        assert resp.status != 500, (field, await resp.text())
    # 300: orjson could not even write it; 1,100: nor read it (its limit is 1,024).
    for depth in (300, 1100):
        too_deep = b'{"a":' * depth + b"1" + b"}" * depth
        raw = orjson.dumps(FORWARDED[field]("PLACEHOLDER")).replace(b'"PLACEHOLDER"',
                                                                    too_deep)
        async with http.post(gateway.url + path, data=raw,
                             headers={"Content-Type": "application/json"}) as resp:
            status, body = resp.status, await resp.read()
        assert status == 400, (field, body)
        error = _error(body)
        assert error["code"] == "invalid_json", field
        assert "nests deeper than 254 levels" in error["message"], (field, depth)


WRONG_MESSAGES = [
    None, "hello", 42, True, {"role": "user", "content": "hi"}, [], [1], ["hi"], [None],
    [{"content": "no role"}], [{"role": "wizard", "content": "hi"}], [{"role": 7}],
    [{"role": "user", "content": 5}], [{"role": "user", "content": {"text": "x"}}],
    [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{"type": "text", "text": 1}]}],
]


async def test_messages_of_every_wrong_type_are_400(gateway: Server,
                                                     http: aiohttp.ClientSession) -> None:
    for messages in WRONG_MESSAGES:
        status, raw = await _post(http, gateway.url,
                                  orjson.dumps({"model": MODEL, "messages": messages}))
        assert status == 400, messages
        error = _error(raw)
        assert error["type"] == "invalid_request_error", messages
        assert str(error["param"]).startswith("messages"), (messages, error)


async def test_wrong_method_is_405_naming_the_allowed_ones(gateway: Server,
                                                          http: aiohttp.ClientSession) -> None:
    for method, path, allow in (("GET", CHAT, "POST"), ("DELETE", "/v1/models", "GET"),
                                ("PUT", "/healthz", "GET"),
                                ("GET", "/admin/v1/policy/reload", "POST")):
        async with http.request(method, gateway.url + path) as resp:
            status, body = resp.status, await resp.read()
            allowed = resp.headers.get("Allow", "")
        assert status == 405 and _error(body)["code"] == "method_not_allowed", path
        assert allow in {m.strip() for m in allowed.split(",")}, (path, allowed)  # RFC 9110


async def test_duplicate_keys_last_one_wins_consistently(gateway: Server,
                                                          http: aiohttp.ClientSession) -> None:
    body = orjson.dumps(chat("hi"))[:-1] + b', "model": "no-such-model"}'
    status, raw = await _post(http, gateway.url, body)
    assert status == 404 and _error(raw)["code"] == "model_not_found"
    body = b'{"model": "no-such-model", ' + orjson.dumps(chat("hi"))[1:]
    status, _ = await _post(http, gateway.url, body)
    assert status == 200


async def test_wrong_content_types_are_415(gateway: Server,
                                           http: aiohttp.ClientSession) -> None:
    for content_type in (None, "text/plain", "multipart/form-data; b=x",
                         "application/x-www-form-urlencoded", "application/jsonx"):
        status, raw = await _post(http, gateway.url, orjson.dumps(chat("hi")), content_type)
        assert status == 415, content_type
        assert _error(raw)["code"] == "unsupported_media_type", content_type


async def test_a_body_that_does_not_match_its_content_encoding_is_400(
        gateway: Server, http: aiohttp.ClientSession) -> None:
    """aiohttp decodes gzip/deflate bodies as it reads them; bytes that are not what the
    header says were a 500 with a logged traceback."""
    body = orjson.dumps(chat())
    for encoding in ("gzip", "deflate"):
        # A fresh connection each: the server closes one whose body it could not read.
        async with http.post(gateway.url + CHAT, data=body, headers={
                "Content-Type": "application/json", "Content-Encoding": encoding,
                "Connection": "close"}) as resp:
            assert resp.status == 400, encoding
            assert _error(await resp.read())["code"] == "invalid_body", encoding
    async with http.post(gateway.url + CHAT, data=gzip.compress(body), headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"}) as resp:
        assert resp.status == 200  # a real gzip body is read as JSON


async def test_unknown_fields_are_dropped_not_forwarded(gateway: Server,
                                                         http: aiohttp.ClientSession) -> None:
    body = chat("hi", frobnicate={"deep": [1, 2]}, **{"x" * 200: 1})
    status, raw = await _post(http, gateway.url, orjson.dumps(body))
    assert status == 200 and orjson.loads(raw)["choices"]


async def _slow_upload(url: str, token: str, give_up_s: float) -> tuple[bytes, float]:
    """Headers promptly, then the body one byte every 0.25 s (a slow-loris client), until
    the gateway answers; (the answer's head and body, seconds until it came)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps(chat("hi"))
    writer.write((f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                  ).encode())
    started = time.monotonic()
    head = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    for byte in body:
        if head.done() or time.monotonic() - started > give_up_s:
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.25)
    answer = await asyncio.wait_for(head, 5)
    took = time.monotonic() - started
    length = int(next(line.split(b":")[1] for line in answer.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    answer += await asyncio.wait_for(reader.readexactly(length), 5)
    writer.close()
    return answer, took


async def test_slow_loris_body_is_cut_off_with_408(start_gateway: StartGateway, sim: Server,
                                                    token: str,
                                                    http: aiohttp.ClientSession) -> None:
    gw = await start_gateway(sim.url, timeouts={"client_body_s": 1.0})
    answer, took = await _slow_upload(gw.url, token, give_up_s=8)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert _error(body)["code"] == "request_timeout"
    assert 0.9 < took < 3
    status, _ = await _post(http, gw.url, orjson.dumps(chat("still serving")))
    assert status == 200


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(
        gateway: Server, token: str) -> None:
    """It waited for the body (which never came) and answered 408 after 30 s."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n"
                  ).encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head


async def _raw_http(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # the server closes after an error
    writer.close()
    return answer


async def test_requests_aiohttp_cannot_parse_get_the_gateway_s_error_shape(
        gateway_process: Callable[..., Process]) -> None:
    """Answered by aiohttp's protocol handler before the app sees them: they used to be
    text/plain, quote the request, name aiohttp in Server, and log a traceback."""
    gw = gateway_process()
    secret = b"Bearer " + b"s3cr3t" * 1500  # over aiohttp's 8190-byte field limit
    cases = [
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n{}", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: " + secret + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ]
    for request, status in cases:
        answer = await _raw_http(gw.url, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        assert lines[0].split()[1] == str(status), lines[0]
        assert headers["content-type"].startswith("application/json"), headers
        assert headers["server"] == "gateway" and headers["x-request-id"], headers
        assert _error(body)["code"] == "invalid_http"
        assert b"s3cr3t" not in answer
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/healthz") as resp:
        assert resp.status == 200  # still serving
    gw.proc.terminate()
    output, _ = gw.proc.communicate(timeout=30)
    assert "Traceback" not in output and "s3cr3t" not in output


@pytest.mark.parametrize("token", [b"\xc3\xa9\xff\xfe", "é.é.é".encode(), b"a.b\x80.c"])
async def test_a_token_that_is_not_ascii_is_401_malformed(gateway: Server,
                                                          token: bytes) -> None:
    """Header bytes that are not UTF-8 reach the app as surrogates, and hashing them for
    the verdict cache raised: a 500 for a client's mistake."""
    body = b"{}"
    answer = await _raw_http(gateway.url, (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n" + body))
    head, _, raw = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    error = _error(raw)
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")


async def _raw_exchange(url: str, request: bytes, answers: int) -> list[bytes]:
    """Send `request` and read `answers` responses (interim 100 Continue included)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    got = []
    for _ in range(answers):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length")), 0)
        got.append(head + await asyncio.wait_for(reader.readexactly(length), 10))
    writer.close()
    return got


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/admin/v1/policy/reload"])
async def test_an_unknown_expectation_is_417_in_the_gateway_s_shape(
        gateway: Server, token: str, path: str) -> None:
    """aiohttp answers Expect before the app runs: it was text/plain, quoting the header."""
    (answer,) = await _raw_exchange(gateway.url, (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: x-quote-me\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{{}}").encode(), 1)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 417"), head
    assert b"application/json" in head and b"x-request-id" in head.lower()
    assert _error(body)["code"] == "expectation_failed"
    assert b"x-quote-me" not in body


async def test_expect_100_continue_still_works(gateway: Server, token: str) -> None:
    body = orjson.dumps(chat("hi", max_tokens=3))
    interim, final = await _raw_exchange(gateway.url, (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode() + body, 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200")
    assert orjson.loads(final.partition(b"\r\n\r\n")[2])["object"] == "chat.completion"


@pytest.mark.parametrize(("bearer", "length", "status"), [
    ("not-a-token", 1000, b"401"), ("VALID", 50 * 1024 * 1024, b"413")])
async def test_expect_100_continue_refuses_before_the_body_is_sent(
        gateway: Server, token: str, bearer: str, length: int, status: bytes) -> None:
    """The point of Expect: a client the gateway would refuse is told so before it
    uploads its body (it used to get 100 Continue first)."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  f"Authorization: Bearer {token if bearer == 'VALID' else bearer}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
                  ).encode())  # and no body: it waits for 100 Continue
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 " + status), head
    assert b"connection: close" in head.lower()
