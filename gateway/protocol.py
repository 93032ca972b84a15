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

Slow clients: aiohttp times out neither a request's headers nor (for an hour) an idle
kept-alive connection, so one client sending a header byte now and then could hold
connections until the process ran out of descriptors. Here a connection that has not
sent a whole request head `header_timeout_s` after it opened (or after the first byte of
its next request) is closed, and idle kept-alive connections close after
`keepalive_timeout`. While descriptors run out anyway, asyncio's accept() error is
logged once every ten seconds with a count, not once per attempt with a traceback.

Slow readers: aiohttp bounds no write either, so a client that keeps its connection open
and reads nothing held a response's handler, its buffers and (for a stream) the upstream
generation for as long as it liked. Once the connection's send buffer is full, a client
that accepts nothing for `send_timeout_s` has its connection closed; one still reading,
however slowly, keeps it. The timer is armed only while the buffer is full, so a client
that keeps up costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.context import REQUEST_ID
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


log = logging.getLogger("gateway.http")

try:  # the kernel's unsent bytes of a socket (Linux: SIOCOUTQ)
    import fcntl
    import termios
    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):
    _OUTQ = None


class _Handler(RequestHandler):
    header_timeout_s = 10.0  # set per server by GatewayRunner
    send_timeout_s = 60.0
    on_send_timeout: Callable[[], None] | None = None
    _header_timer: asyncio.TimerHandle | None = None
    _send_timer: asyncio.TimerHandle | None = None
    _send_backlog = 0  # bytes waiting to be sent when the send timer was last armed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:  # a whole request head arrived
            self._stop_waiting()
        elif self._header_timer is None and not self._request_in_progress \
                and not self._messages:
            self._await_head()  # the first bytes of the next request on this connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_waiting()
        self._stop_send_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm_send_timer()

    def resume_writing(self) -> None:
        self._stop_send_timer()
        super().resume_writing()

    def _arm_send_timer(self) -> None:
        transport = self.transport
        self._send_backlog = _unsent(transport) if transport is not None else 0
        self._send_timer = self._loop.call_later(self.send_timeout_s, self._send_late)

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_late(self) -> None:
        self._send_timer = None
        transport = self.transport
        if transport is None:
            return
        if _unsent(transport) < self._send_backlog:
            self._arm_send_timer()  # it took some: slow, not silent
            return
        request = self._current_request
        log.warning("client %s accepted nothing for %gs, connection closed (request %s)",
                    _peer(transport), self.send_timeout_s,
                    request.get(REQUEST_ID, "-") if request is not None else "-")
        if self.on_send_timeout is not None:
            self.on_send_timeout()
        transport.abort()  # its handler is cancelled, and a stream's upstream closed

    def _await_head(self) -> None:
        self._header_timer = self._loop.call_later(self.header_timeout_s, self._head_late)

    def _stop_waiting(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _head_late(self) -> None:
        self._header_timer = None
        if not self._messages and not self._request_in_progress:
            log.debug("closed a connection that sent no whole request in %.0fs",
                      self.header_timeout_s)
            self.force_close()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, LineTooLong):  # aiohttp says 400 for every oversized line
            status = 414 if _is_target(exc.args[0]) else 431
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


def _unsent(transport: asyncio.BaseTransport) -> int:
    """Bytes the client has yet to accept: the transport's buffer plus, on Linux, the
    kernel's send queue. The kernel's share matters: the transport may write again only
    once a third of a send buffer of megabytes has drained, so a client reading slowly
    can be taking bytes for seconds while the transport's buffer stays the same."""
    # uvloop's transports do not subclass asyncio's, so ask for the method, not the class
    buffered = getattr(transport, "get_write_buffer_size", None)
    unsent: int = buffered() if buffered is not None else 0
    sock = transport.get_extra_info("socket")
    if _OUTQ is not None and sock is not None:
        try:
            queued = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
            unsent += int.from_bytes(queued, sys.byteorder, signed=True)
        except OSError:
            pass
    return unsent


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"


def _is_target(line: object) -> bool:
    """Whether the line aiohttp found too long is the request target (a URL: 414), not a
    header (431): a target starts with `/` or a scheme, a header value hardly ever."""
    head = bytes(line[:8]) if isinstance(line, bytes | bytearray) else str(line)[:8].encode()
    return head.startswith((b"/", b"http://", b"https://"))


class _Server(web.Server):
    header_timeout_s = 10.0
    send_timeout_s = 60.0
    on_send_timeout: Callable[[], None] | None = None

    def __call__(self) -> RequestHandler:
        kwargs: dict[str, Any] = self._kwargs
        handler = _Handler(self, loop=self._loop, **kwargs)
        handler.header_timeout_s = self.header_timeout_s
        handler.send_timeout_s = self.send_timeout_s
        handler.on_send_timeout = self.on_send_timeout
        return handler


class GatewayRunner(web.AppRunner):
    """web.AppRunner whose connections answer protocol errors like the gateway does and
    close when a client is too slow to send a request head, stays idle too long, or
    accepts nothing of a response for `send_timeout_s` (`on_send_timeout` counts those)."""

    def __init__(self, app: web.Application, *, header_timeout_s: float = 10.0,
                 keepalive_timeout: float = 75.0, send_timeout_s: float = 60.0,
                 on_send_timeout: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=keepalive_timeout, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._send_timeout_s = send_timeout_s
        self._on_send_timeout = on_send_timeout

    async def setup(self) -> None:
        await super().setup()
        asyncio.get_running_loop().set_exception_handler(AcceptErrorThrottle())

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server; only how it builds handlers changes
        assert isinstance(server, _Server)
        server.header_timeout_s = self._header_timeout_s
        server.send_timeout_s = self._send_timeout_s
        server.on_send_timeout = self._on_send_timeout
        return server


class AcceptErrorThrottle:
    """Loop exception handler: asyncio reports every failed accept() (out of file
    descriptors, say) with a traceback; those become one line per `every_s` with a count.
    Everything else goes to the default handler."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.suppressed = 0
        self._last = -float("inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system"):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self._last < self.every_s:
            self.suppressed += 1
            return
        error = context.get("exception")
        log.error("cannot accept connections: %s (%d more since the last report)",
                  error if error is not None else "out of system resource", self.suppressed)
        self._last, self.suppressed = now, 0
