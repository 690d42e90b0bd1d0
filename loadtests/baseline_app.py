"""The framework's limits: bare aiohttp + uvloop servers returning a fixed JSON body on every GET.

Run by the harness as ``python -m loadtests.baseline_app --port N --body-file F [--kind app|server]``:

* ``app`` (default): a ``web.Application`` with a router (the framework as most apps use it);
* ``server``: aiohttp's documented low-level server (``web.Server`` with one handler: no
  ``Application``, router or middlewares), the "hello-world" floor of any aiohttp server.

Same response headers as the broker's hit (JSON content type, ``Cache-Control: no-store``).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import uvloop
from aiohttp import web

HEADERS = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}


def make_app(body: bytes) -> web.Application:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=HEADERS)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="Healthy")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{tail:.*}", handler)
    return app


async def serve_low_level(body: bytes, port: int) -> None:
    """aiohttp's low-level server: one handler answering every request with ``body``."""

    async def handler(_request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, headers=HEADERS)

    runner = web.ServerRunner(web.Server(handler, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM (default action: exit)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--kind", choices=("app", "server"), default="app")
    args = parser.parse_args()
    body = args.body_file.read_bytes()
    if args.kind == "server":
        uvloop.run(serve_low_level(body, args.port))
        return
    uvloop.install()
    web.run_app(make_app(body), host="127.0.0.1", port=args.port, access_log=None, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
