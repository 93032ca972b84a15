"""HTTP/1.1 to the backends for what every request sends (completions, embeddings, token
counts, guard verdicts): pooled keep-alive connections and httptools' C parser, without
aiohttp's client machinery (request objects, tracing, per-request timers), which cost
about 100 us of CPU per request (bench/proxy.py). Health probes and model discovery keep
aiohttp's session: they are rare and want its generality.

Failures raise aiohttp's exception classes, so callers handle both clients alike:
`ConnectFailed` (a ClientConnectionError) when no connection could be opened,
`Disconnected` (a ServerDisconnectedError) when the backend closed it, and
`ClientPayloadError` for an answer that is not HTTP.
"""

from __future__ import annotations

import asyncio
import ssl
from base64 import b64encode
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# A stream the client reads slower than the backend writes is held here, at most this
# much, before the backend connection stops being read (TCP then slows the backend).
_HIGH_WATER = 256 * 1024
# A status line and headers longer than this are no backend's answer (aiohttp allows
# 8 KiB a line); the parser would otherwise collect them without end.
MAX_HEAD_BYTES = 64 * 1024
# After a stream's [DONE] only the body's framing is left (the chunked encoding's end,
# often a packet later): a released connection waits this long for it and is then kept,
# not closed. Closing after every stream would open a connection per request and leave
# each closed one in TIME_WAIT for a minute: a busy gateway runs out of ports.
_DRAIN_S = 2.0


class ConnectFailed(aiohttp.ClientConnectionError):
    """No connection to the backend could be opened (refused, unreachable, time-out, TLS)."""


class Disconnected(aiohttp.ServerDisconnectedError):
    """The backend closed or reset the connection before its answer was complete."""


@dataclass(frozen=True, slots=True)
class _Target:
    key: tuple[str, str, int]  # scheme, host, port: which connections may be shared
    host: str
    port: int
    tls: bool
    host_header: str
    path: str
    basic_auth: str  # the header line for user info in the URL, or ""


class UpstreamResponse:
    """One answer: status and headers at once, the body as it arrives. `release()` hands
    a connection whose answer has ended back to the pool and closes any other (an
    unfinished answer: vLLM aborts the generation when its client goes away)."""

    def __init__(self, conn: _Connection, status: int, headers: CIMultiDictProxy[str],
                 eof_delimited: bool) -> None:
        self.status = status
        self.headers = headers
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self.eof_delimited = eof_delimited  # neither a length nor chunks: ends at close
        self.content = self  # aiohttp's spelling: resp.content.iter_any()
        self._conn: _Connection | None = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._ending = False

    # -- fed by the connection ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._eof:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the relay ----------------------------------------------------------------

    @property
    def arrived(self) -> bool:
        """The whole body has arrived (read or not): reading it cannot wait."""
        return self._eof

    def iter_any(self) -> _Pieces:
        """Each piece of the body as soon as it arrives (what arrived meanwhile, joined)."""
        return _Pieces(self)

    async def readany(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        while not self._chunks:
            if self._eof:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take()

    async def read(self) -> bytes:
        """The whole body."""
        parts = [chunk async for chunk in self.iter_any()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            if self._conn is not None:
                self._conn.resume()
        return data

    def expect_end(self) -> None:
        """The caller has what it wants (a stream's [DONE]): on release, the connection
        may wait for the body's framing to end, and be kept."""
        self._ending = True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.done_with(drain=self._ending)


class _Pieces:
    """`async for piece in response.iter_any()`: a plain iterator, not an async generator,
    so a caller that stops early (at a stream's [DONE]) leaves nothing to finalise."""

    __slots__ = ("_response",)

    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        data = await self._response.readany()
        if not data:
            raise StopAsyncIteration
        return data


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a backend, carrying one request at a time."""

    def __init__(self, owner: UpstreamHTTP, key: tuple[str, str, int]) -> None:
        self._owner = owner
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._complete = False  # the answer arrived whole
        self._keep_alive = False  # ... and the backend keeps the connection open
        self._head_bytes = 0  # received before the answer's headers were complete
        self._busy = False  # a request is out (or its answer's end awaited): bytes are owed
        self._drain_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy:  # idle in the pool: nothing is owed, so this is not HTTP
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(aiohttp.ClientPayloadError("The backend switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._broken(aiohttp.ClientPayloadError(f"Not an HTTP answer: {exc}"))
            return
        if self._response is None:  # the headers are not complete yet
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._broken(aiohttp.ClientPayloadError("The answer's headers are too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._owner.forget(self)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        response = self._response
        if response is not None and not self._complete:
            if exc is None and response.eof_delimited:
                response.feed_eof()
            else:
                response.fail(Disconnected("The backend closed the connection mid-answer"))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(Disconnected("The backend closed the connection"))

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if not self._busy:  # a second answer in the bytes that ended the first
            self.close()
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and the like: the answer follows
            self._headers.clear()
            return
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        self._headers.clear()
        eof_delimited = "Content-Length" not in headers and \
            "chunked" not in headers.get("Transfer-Encoding", "").lower()
        self._response = UpstreamResponse(self, status, headers, eof_delimited)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._response)

    def on_body(self, body: bytes) -> None:
        if self._drain_timer is not None:  # body after [DONE]: not the framing awaited
            self.close()
        elif self._response is not None:
            self._response.feed(body)

    def on_message_complete(self) -> None:
        if self._response is None:  # the end of an informational answer
            return
        self._complete = True
        # Asked now: once this callback returns, the parser is reset for the next answer.
        self._keep_alive = self._parser.should_keep_alive()
        self._response.feed_eof()
        if self._drain_timer is not None:  # released at [DONE]: this was what it waited for
            self._drain_timer.cancel()
            self._drain_timer = None
            self._settle()

    # -- used by UpstreamHTTP and UpstreamResponse ---------------------------------------

    def send(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._response = None
        self._complete = self._keep_alive = False
        self._head_bytes = 0
        self._busy = True
        self.transport.write(data)
        return self._waiter

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def done_with(self, *, drain: bool) -> None:
        """The answer's reader is done: keep the connection when the answer has ended on
        the wire (or, with `drain`, once its framing does), else close it."""
        if self._complete or self.closed or not drain:
            self._settle()
            return
        self.resume()  # a reader that paused it is gone: the framing must get in
        self._drain_timer = asyncio.get_running_loop().call_later(_DRAIN_S, self.close)

    def _settle(self) -> None:
        if self._complete and self._keep_alive and not self.closed:
            self._busy = False
            self._waiter = None
            self._response = None
            self._owner.keep(self)
        else:
            self.close()

    def close(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if not self.closed:
            self.closed = True
            self._owner.forget(self)
            if self.transport is not None:
                self.transport.abort()  # no lingering: the backend must see the close now

    def _broken(self, error: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif self._response is not None:
            self._response.fail(error)
        self.close()


class UpstreamHTTP:
    """Keep-alive connections to the backends, idle ones closed after `keepalive_s`."""

    def __init__(self, *, connect_timeout_s: float, keepalive_s: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._tls = tls
        self._idle: dict[tuple[str, str, int], dict[_Connection, None]] = {}
        self._live: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}
        self._closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """POST `body`; returns once the answer's status and headers arrived."""
        target = self._target(url)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise ValueError("a header name or value holds a line break")
        if target.basic_auth and not any(k.lower() == "authorization" for k in headers):
            lines += target.basic_auth
        head = (f"POST {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
                f"Accept-Encoding: identity\r\nContent-Length: {len(body)}\r\n{lines}\r\n")
        conn = self._idle_connection(target.key) or await self._connect(target)
        try:
            return await conn.send(head.encode("latin-1") + body)
        except BaseException:  # a time-out or a failure: the request is left unanswered
            conn.close()
            raise

    @property
    def busy(self) -> int:
        """Connections carrying a request now (not idle in the pool)."""
        return len(self._live) - sum(len(idle) for idle in self._idle.values())

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._live):
            conn.close()

    def keep(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_timer = loop.call_at(loop.time() + self._keepalive_s, conn.close)
        self._idle.setdefault(conn.key, {})[conn] = None

    def forget(self, conn: _Connection) -> None:
        self._live.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None:
            idle.pop(conn, None)
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn, _ = idle.popitem()  # the most recent: older ones age out
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if not conn.closed and conn.transport is not None and \
                    not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, target: _Target) -> _Connection:
        if self._closed:
            raise ConnectFailed("The upstream client is closed")
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if target.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, target.key), target.host, target.port,
                    ssl=tls, server_hostname=target.host if tls else None)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise ConnectFailed(f"Cannot connect to {target.host_header}: "
                                f"{exc.__class__.__name__}") from exc
        self._live.add(conn)
        return conn

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            host = parts.hostname or ""
            port = parts.port or (443 if tls else 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            basic_auth = ""
            if parts.username is not None:  # as aiohttp does: Basic auth from the URL
                pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                basic_auth = f"Authorization: Basic {b64encode(pair.encode()).decode()}\r\n"
            target = _Target((parts.scheme, host, port), host, port, tls,
                             parts.netloc.rpartition("@")[2], path or "/", basic_auth)
            if len(self._targets) < 1024:
                self._targets[url] = target
        return target
