"""The observe middleware: every answered request gets its count and its one log line."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from tests.conftest import Server, chat, requests_total

CHAT = "/v1/chat/completions"


def _lines(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    return {r.request_id: r for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "gateway.request" and r.getMessage() == "request"}


async def _expect_refused(url: str, authorization: str, length: int) -> bytes:
    """A client that declares its body and waits for 100 Continue, as curl does for large
    bodies: the gateway answers from the headers alone."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  f"{authorization}Content-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return head


def _request_id(head: bytes) -> str:
    return next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-request-id:"))


@pytest.mark.parametrize(("authorization", "length", "status", "auth_failure"), [
    ("VALID", 5 * 1024 * 1024, 413, None),
    ("", 5 * 1024 * 1024, 401, "missing"),
    ("", 100, 401, "missing"),
    ("Bearer abc.def.ghi", 100, 401, "malformed"),
])
async def test_refusals_before_the_body_are_logged_as_they_are_counted(
        gateway: Server, token: str, caplog: pytest.LogCaptureFixture, authorization: str,
        length: int, status: int, auth_failure: str | None) -> None:
    """An `Expect: 100-continue` refusal (a declared size over the limit, no token) was
    counted in gateway_requests_total but left no log line."""
    if authorization:
        authorization = "Authorization: " + (
            f"Bearer {token}" if authorization == "VALID" else authorization) + "\r\n"
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        head = await _expect_refused(gateway.url, authorization, length)
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    line = _lines(caplog)[_request_id(head)]
    assert (line.status, line.route, line.method) == (  # type: ignore[attr-defined]
        status, CHAT, "POST")
    assert getattr(line, "auth_failure", None) == auth_failure
    counted = await requests_total(gateway.url, "status", route=CHAT)
    assert counted == {str(status): 1.0}


async def test_a_401_log_line_says_why_and_never_holds_the_token(
        gateway: Server, caplog: pytest.LogCaptureFixture) -> None:
    refused = {"": "missing", "Bearer abc.def.ghi": "malformed",
               "Basic dXNlcjpwYXNzd29yZA==": "malformed"}
    ids = {}
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        async with aiohttp.ClientSession() as http:
            for authorization in refused:
                headers = {"Authorization": authorization} if authorization else {}
                async with http.post(gateway.url + CHAT, json=chat(), headers=headers) as resp:
                    assert resp.status == 401
                    ids[authorization] = resp.headers["x-request-id"]
    lines = _lines(caplog)
    for authorization, reason in refused.items():
        line = lines[ids[authorization]]
        assert line.auth_failure == reason  # type: ignore[attr-defined]
        assert line.status == 401  # type: ignore[attr-defined]
    raw = repr([r.__dict__ for r in caplog.records])
    assert "abc.def.ghi" not in raw and "dXNlcjpwYXNzd29yZA" not in raw
