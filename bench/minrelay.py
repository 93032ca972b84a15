"""The reference point for bench/proxy.py: the least an aiohttp relay can do.

POST /v1/chat/completions is forwarded to the upstream as is, and the answer is copied
back: whole for JSON, chunk by chunk as it arrives for event streams. No parsing, no
checks, no metrics. Whatever the gateway costs beyond this is the gateway's own work. It
runs on the event loop the gateway runs on (uvloop where installed, gateway/eventloop.py).

    python bench/minrelay.py UPSTREAM_URL PORT
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import ClientSession, TCPConnector, web

from gateway import eventloop

SESSION = web.AppKey("session", ClientSession)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app[SESSION].post(
            UPSTREAM + "/v1/chat/completions", data=body,
            headers={"Content-Type": "application/json"}) as upstream:
        if upstream.content_type != "text/event-stream":
            return web.Response(body=await upstream.read(), status=upstream.status,
                                content_type=upstream.content_type)
        response = web.StreamResponse(status=upstream.status,
                                      headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_get("/health", lambda _: asyncio.sleep(0, web.Response()))
    app[SESSION] = ClientSession(connector=TCPConnector(limit=0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    UPSTREAM = sys.argv[1]
    eventloop.run(main(int(sys.argv[2])))
