"""Serving a planned job: time to first token, pacing, faults, and noticing a client leave.

Streams send their headers at once, as vLLM does, then wait `ttft_s`, then send one SSE
event per generated token (per choice), paced at `tokens_per_second` against the time of
the first token so that slow writes do not add up. At 0 tokens per second the stream
still yields to the event loop between tokens: other streams keep going and a client
that leaves is noticed. Non-stream requests wait as long as the stream would have taken.

A client that leaves is noticed on the next write (aiohttp raises ConnectionResetError)
or, while waiting, by polling the transport every `POLL_S` seconds; when the server runs
with `handler_cancellation=True`, aiohttp also cancels the handler at once.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import NoReturn

import orjson
from aiohttp import web

from gateway.sim.faults import Faults
from gateway.sim.job import DONE, Job
from gateway.sim.metrics import Recorder

POLL_S = 0.05
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
MALFORMED = b"data: {not json\n\n"


class ClientGone(Exception):
    """The connection is closed: by the client, or by a fault on purpose."""


@dataclass(frozen=True, slots=True)
class Pace:
    ttft_s: float
    tokens_per_second: float


def client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def pause_until(request: web.BaseRequest, deadline: float) -> None:
    """Sleep until the loop's clock reads `deadline`; ClientGone if the client leaves."""
    loop = asyncio.get_running_loop()
    while True:
        if client_gone(request):
            raise ClientGone
        left = deadline - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, POLL_S))


async def pause(request: web.BaseRequest, seconds: float) -> None:
    await pause_until(request, asyncio.get_running_loop().time() + seconds)


def hang_up(request: web.BaseRequest, flush: bool = True) -> NoReturn:
    """Close the connection mid-response. With `flush`, what was written still reaches
    the client first (then FIN); without it the connection is aborted at once."""
    transport = request.transport
    if transport is not None:
        if flush:
            transport.close()
        else:
            transport.abort()
    raise ClientGone


class Run:
    """Serves one job to one client; `response` is set once headers have gone out."""

    def __init__(self, request: web.Request, job: Job, faults: Faults, pace: Pace,
                 recorder: Recorder) -> None:
        self.request = request
        self.job = job
        self.faults = faults
        self.pace = pace
        self.recorder = recorder
        self.response: web.StreamResponse | None = None

    async def stream(self) -> web.StreamResponse:
        job, request = self.job, self.request
        response = self.response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await pause(request, self.pace.ttft_s)
        loop = asyncio.get_running_loop()
        first = loop.time()
        tps = self.pace.tokens_per_second
        for step in range(job.steps):
            if step:
                if tps > 0:
                    await pause_until(request, first + step / tps)
                else:
                    await asyncio.sleep(0)
            await self._fault_point(step)
            live = [c for c in job.choices if step < c.plan.tokens]
            frames = [job.role_event(c) for c in live] if step == 0 and job.request.chat else []
            frames += [job.token_event(c, step) for c in live]
            await response.write(b"".join(frames))
            self.recorder.step(len(live))
        await self._fault_point(job.steps)
        if job.request.include_usage:
            await response.write(job.usage_event())
        await response.write(DONE)
        await response.write_eof()
        return response

    async def whole(self) -> web.StreamResponse:
        job, request = self.job, self.request
        await pause(request, self.pace.ttft_s)
        self.recorder.step(len(job.choices))
        rest = job.steps - 1
        tps = self.pace.tokens_per_second
        if rest and tps > 0:
            await pause(request, rest / tps)
        self.recorder.steps(rest, job.completion_tokens - len(job.choices),
                            1 / tps if tps > 0 else 0.0)
        faults = self.faults
        if faults.drop_after is not None:
            hang_up(request)
        if faults.stall_after is not None:
            await pause(request, math.inf)
        if faults.malformed_after is not None:
            return web.Response(body=b"{not json", content_type="application/json")
        return web.Response(body=orjson.dumps(job.body()), content_type="application/json")

    async def _fault_point(self, sent: int) -> None:
        """Stream faults fire after `sent` token chunks, or at the end if it comes first."""
        faults, end = self.faults, self.job.steps

        def due(after: int | None) -> bool:
            return after is not None and min(after, end) == sent

        if due(faults.drop_after):
            hang_up(self.request)
        if due(faults.stall_after):
            await pause(self.request, math.inf)
        if due(faults.malformed_after):
            assert self.response is not None
            await self.response.write(MALFORMED)
