"""Security beyond authentication: smuggling, headers."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from tests.conftest import Server, chat


async def _raw(url: str, payload: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        b"Content-Length: 4\r\nContent-Length: 5\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: xchunked\r\n",
    ],
)
async def test_request_smuggling_inputs_are_refused(gateway: Server, headers: bytes) -> None:
    payload = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + headers +
               b"\r\n0\r\n\r\nGET /admin/v1/policy HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await _raw(gateway.url, payload)
    assert re.match(rb"HTTP/1\.[01] (400|501) ", answer), answer[:80]
    assert answer.count(b"HTTP/1.") == 1, "the smuggled second request must not be served"


async def test_security_headers_on_every_response(gateway: Server,
                                                  http: aiohttp.ClientSession) -> None:
    for method, path, body in (("GET", "/healthz", None), ("GET", "/nope", None),
                               ("POST", "/v1/chat/completions", chat()),
                               ("POST", "/v1/chat/completions", chat(stream=True))):
        async with http.request(method, gateway.url + path, json=body) as resp:
            await resp.read()
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Server"] == "gateway"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
            assert float(resp.headers["x-gateway-overhead-ms"]) >= 0
