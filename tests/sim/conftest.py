"""Clients for the simulator's tests: a plain aiohttp session, the openai SDK, raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI

from tests.conftest import Server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def client(sim: Server) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def events(raw: bytes) -> list[bytes]:
    """The payloads of an SSE body, checking the framing: `data: ...` events, blank-line
    separated, nothing else."""
    assert raw.endswith(b"\n\n")
    frames = raw[:-2].split(b"\n\n")
    assert all(f.startswith(b"data: ") and b"\n" not in f for f in frames), raw
    return [f[len(b"data: "):] for f in frames]


def chunks(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of a complete stream, which must end with [DONE]."""
    payloads = events(raw)
    assert payloads[-1] == b"[DONE]"
    return [orjson.loads(p) for p in payloads[:-1]]


async def read_until_broken(resp: aiohttp.ClientResponse) -> tuple[list[bytes], bool]:
    """The SSE payloads received, and whether the stream broke instead of ending cleanly."""
    payloads: list[bytes] = []
    try:
        async for line in resp.content:
            if line.startswith(b"data: "):
                payloads.append(line[len(b"data: "):].rstrip(b"\n"))
    except aiohttp.ClientPayloadError:
        return payloads, True
    return payloads, False


class Raw:
    """An HTTP/1.1 request over a bare socket, for what a client library hides: connection
    resets, missing terminators, and closing the connection at an exact moment."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def post(cls, url: str, path: str, body: object,
                   headers: dict[str, str] | None = None) -> Raw:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        data = orjson.dumps(body)
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     f"{head}\r\n".encode() + data)
        await writer.drain()
        return cls(reader, writer)

    async def head(self) -> bytes:
        return await self.reader.readuntil(b"\r\n\r\n")

    async def rest(self) -> bytes:
        return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
