"""The baseline of bench/ingress.py: an aiohttp handler that reads and parses the body, then
answers 200; on uvloop, without access log, as the bridge runs. Usage: bare_server.py PORT.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson
import uvloop
from aiohttp import web

_ACCEPTED = b'{"status":"accepted"}'


async def receive(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(body=_ACCEPTED, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/webhooks/apizee", receive)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
