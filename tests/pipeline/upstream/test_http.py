"""The completion path's own HTTP/1.1 client, against real servers on loopback: aiohttp
backends, and bare-socket ones for what aiohttp would never send."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.pipeline.upstream.http import ConnectFailed, Disconnected, UpstreamHTTP
from tests.conftest import fake_backend, free_port

pytestmark = pytest.mark.both_loops

JSON = {"content-type": "application/json"}


@pytest.fixture
async def client() -> AsyncIterator[UpstreamHTTP]:
    http = UpstreamHTTP(connect_timeout_s=2.0, keepalive_s=0.3)
    yield http
    await http.close()


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _raw_backend(answer: Answer) -> tuple[str, asyncio.Server]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            await answer(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


def _writes(*parts: bytes, pause_s: float = 0.0) -> Answer:
    """A bare-socket answer: `parts` written in turn, `pause_s` apart."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n, part in enumerate(parts):
            if n:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()

    return answer


async def test_a_connection_is_kept_and_reused_then_closed_when_idle(
        client: UpstreamHTTP) -> None:
    connections = [0]
    answered: list[int] = []
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                answered.append(connections[0])
                body = str(len(answered)).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
        closed.set()  # the client closed it
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        for n in (1, 2, 3):
            resp = await client.post(url + "/v1/x", b"{}", JSON)
            assert resp.status == 200 and await resp.read() == str(n).encode()
            resp.release()
            assert client.busy == 0
        assert answered == [1, 1, 1]  # one connection for all three
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(closed.wait(), 2.0)
        assert asyncio.get_running_loop().time() - started > 0.2  # keepalive_s: 0.3


async def test_releasing_an_unread_answer_closes_its_connection(
        client: UpstreamHTTP, servers: list[web.AppRunner]) -> None:
    """What makes vLLM abort a generation whose caller went away."""
    aborted = asyncio.Event()

    async def backend(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(200):
                await resp.write(b"data: {}\n\n")
                await asyncio.sleep(0.01)
        except (ConnectionError, asyncio.CancelledError):
            aborted.set()
            raise
        return resp

    url = await fake_backend(backend, servers)
    resp = await client.post(url + "/v1/x", b"{}", JSON)
    async for chunk in resp.content.iter_any():
        assert chunk.startswith(b"data:")
        break
    resp.release()
    assert client.busy == 0
    await asyncio.wait_for(aborted.wait(), 2.0)


async def test_a_slow_reader_holds_back_the_backend_not_the_gateways_memory(
        client: UpstreamHTTP, servers: list[web.AppRunner]) -> None:
    piece = b"x" * 65536
    pieces = 1024  # 64 MiB: more than loopback's socket buffers can hold
    written = [0]

    async def backend(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(pieces):
            await resp.write(piece)
            written[0] += len(piece)
        await resp.write_eof()
        return resp

    url = await fake_backend(backend, servers)
    resp = await client.post(url + "/v1/x", b"{}", JSON)
    await asyncio.sleep(0.5)  # not reading
    assert written[0] < pieces * len(piece) // 2
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
    assert total == pieces * len(piece)
    resp.release()


async def test_chunked_and_close_delimited_bodies_are_read_whole(
        client: UpstreamHTTP) -> None:
    chunked = _writes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
    until_close = _writes(b"HTTP/1.0 200 OK\r\n\r\nhello ", b"world", pause_s=0.05)

    for answer in (chunked, until_close):
        url, server = await _raw_backend(answer)
        async with server:
            resp = await client.post(url + "/", b"{}", JSON)
            assert await resp.read() == b"hello world"
            resp.release()


async def test_an_informational_answer_before_the_answer_is_skipped(
        client: UpstreamHTTP) -> None:
    answer = _writes(b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok")

    url, server = await _raw_backend(answer)
    async with server:
        resp = await client.post(url + "/", b"{}", JSON)
        assert (resp.status, resp.headers["x-a"], await resp.read()) == (201, "b", b"ok")
        resp.release()


@pytest.mark.parametrize("parts", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",),
    # Bytes on an idle connection: nothing is owed there, so they are not the answer to
    # the next request.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"),
], ids=["connection close", "bytes while idle"])
async def test_a_connection_that_cannot_carry_the_next_answer_is_not_reused(
        client: UpstreamHTTP, parts: tuple[bytes, ...]) -> None:
    connections = [0]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        await _writes(*parts, pause_s=0.05)(reader, writer)
        await reader.read()

    url, server = await _raw_backend(answer)
    async with server:
        for _ in range(2):
            resp = await client.post(url + "/", b"{}", JSON)
            assert await resp.read() == b"ok"
            resp.release()
            await asyncio.sleep(0.1)
    assert connections[0] == 2


async def test_failures_are_aiohttps_errors_of_the_right_kind(client: UpstreamHTTP) -> None:
    with pytest.raises(ConnectFailed):
        await client.post(f"http://127.0.0.1:{free_port()}/", b"{}", JSON)

    garbage = _writes(b"SMTP ready\r\n\r\n")
    cut = _writes(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")

    async def silent_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass

    async def endless_headers(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        for _ in range(64):
            writer.write(b"a" * 4096)
            await writer.drain()
        await reader.read()

    url, server = await _raw_backend(endless_headers)
    async with server:
        with pytest.raises(aiohttp.ClientPayloadError, match="headers are too long"):
            await client.post(url + "/", b"{}", JSON)
    url, server = await _raw_backend(garbage)
    async with server:
        with pytest.raises(aiohttp.ClientPayloadError):
            await client.post(url + "/", b"{}", JSON)
    url, server = await _raw_backend(silent_close)
    async with server:
        with pytest.raises(Disconnected):
            await client.post(url + "/", b"{}", JSON)
    url, server = await _raw_backend(cut)
    async with server:
        resp = await client.post(url + "/", b"{}", JSON)
        with pytest.raises(Disconnected):
            await resp.read()
        resp.release()
    assert client.busy == 0


async def test_a_time_out_while_waiting_closes_the_connection(client: UpstreamHTTP) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    url, server = await _raw_backend(stall)
    async with server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.post(url + "/", b"{}", JSON)
        assert client.busy == 0


async def test_headers_cannot_smuggle_a_second_request(client: UpstreamHTTP) -> None:
    with pytest.raises(ValueError, match="line break"):
        await client.post("http://127.0.0.1:1/", b"{}",
                          {"x-request-id": "a\r\nContent-Length: 0\r\n\r\nPOST /x HTTP/1.1"})


async def test_user_info_in_the_url_is_basic_auth_unless_a_key_is_sent(
        client: UpstreamHTTP, servers: list[web.AppRunner]) -> None:
    seen: list[str] = []

    async def backend(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(text="ok")

    url = (await fake_backend(backend, servers)).replace("http://", "http://ad%40min:p%3Aw@")
    for headers in (JSON, {**JSON, "Authorization": "Bearer k"}):
        resp = await client.post(url + "/", b"{}", headers)
        await resp.read()
        resp.release()
    assert seen == ["Basic YWRAbWluOnA6dw==", "Bearer k"]  # ad@min:p:w


@pytest.mark.parametrize("after_done", [b"0\r\n\r\n", b"5\r\nextra\r\n0\r\n\r\n", b""])
async def test_a_connection_released_at_done_is_kept_once_its_body_ends(
        monkeypatch: pytest.MonkeyPatch, after_done: bytes) -> None:
    """Released after [DONE] with the chunked end still to come: kept once the end arrives;
    closed when more body arrives instead, or nothing within the drain time."""
    monkeypatch.setattr("gateway.pipeline.upstream.http._DRAIN_S", 0.3)
    client = UpstreamHTTP(connect_timeout_s=2.0, keepalive_s=5.0)
    connections = [0]
    done = b"data: [DONE]\n\n"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        while True:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (len(done), done))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(after_done)
            await writer.drain()
            try:
                await reader.readuntil(b"\r\n\r\n")  # the next request on this connection
                await reader.readexactly(2)
            except asyncio.IncompleteReadError:
                return

    url, server = await _raw_backend(answer)
    async with server:
        for _ in range(2):
            resp = await client.post(url + "/", b"{}", JSON)
            assert await resp.content.iter_any().__anext__() == done
            resp.expect_end()
            resp.release()
            await asyncio.sleep(0.5)
            assert client.busy == 0  # kept or closed, not left waiting
        await client.close()
        await asyncio.sleep(0.05)
    assert connections[0] == (1 if after_done == b"0\r\n\r\n" else 2)
