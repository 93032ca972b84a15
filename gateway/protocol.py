"""Errors aiohttp answers itself, before the app sees a request: in the gateway's shape.

A request line or header that cannot be parsed (a header over 8 KB, both Content-Length
and Transfer-Encoding, a negative length, a Content-Encoding aiohttp cannot decode) is
answered by aiohttp's protocol handler with a text/plain body that can quote the request
(the start of an oversized Authorization header, say), its own Server banner, and an
ERROR log with a traceback. `GatewayRunner` serves the app with a handler that answers
these in OpenAI's error shape instead, with the gateway's headers, quoting nothing, and
logs a client's malformed request at INFO without a traceback.

`expect_handler` does the same for an `Expect` header other than 100-continue, which
aiohttp answers (417) before the app's middleware runs.
"""

from __future__ import annotations

import secrets
from http import HTTPStatus
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.errors import ExpectationFailed, GatewayError, UpstreamStatus
from gateway.middleware import error_response


def protocol_error(status: int) -> GatewayError:
    """The error for a request aiohttp could not parse, by the status it chose."""
    if status >= 500:
        return GatewayError("Internal error")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Bad Request"
    return UpstreamStatus(status, f"The request is not valid HTTP/1.1 ({status} {phrase})",
                          type_="invalid_request_error", param=None, code="invalid_http")


async def expect_handler(request: web.Request) -> web.Response | None:
    """`Expect: 100-continue` is answered as aiohttp does; any other expectation is 417."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response itself has not started
        return None
    return error_response(ExpectationFailed("Only 'Expect: 100-continue' is supported"))


class _Handler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:  # the gateway's own fault: aiohttp logs it with its traceback
            super().handle_error(request, status, exc, message)
        else:
            # aiohttp's message may quote the request (an oversized header's first bytes).
            self.logger.info("malformed HTTP request from %s: %d %s", request.remote, status,
                             exc.__class__.__name__ if exc is not None else "")
            if request.writer.output_size > 0:
                raise ConnectionError("a response was already started")
        error = protocol_error(status)
        response = web.Response(status=status, body=error.to_json(),
                                content_type="application/json",
                                headers={"Server": "gateway",
                                         "x-request-id": secrets.token_hex(16)})
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        kwargs: dict[str, Any] = self._kwargs
        return _Handler(self, loop=self._loop, **kwargs)


class GatewayRunner(web.AppRunner):
    """web.AppRunner whose connections answer protocol errors like the gateway does."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server; only how it builds handlers changes
        return server
