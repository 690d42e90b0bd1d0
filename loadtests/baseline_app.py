"""The framework's limit: a bare aiohttp + uvloop app returning a fixed JSON body on every GET.

Run by the harness as ``python -m loadtests.baseline_app --port N --body-file F``.
Same response headers as the broker's hit (JSON content type, ``Cache-Control: no-store``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvloop
from aiohttp import web


def make_app(body: bytes) -> web.Application:
    headers = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="Healthy")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{tail:.*}", handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    args = parser.parse_args()
    app = make_app(args.body_file.read_bytes())
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, handle_signals=True)


if __name__ == "__main__":
    main()
