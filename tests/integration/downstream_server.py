"""A real HTTPS downstream API on loopback for the ``/DownstreamApi*`` tests.

The server uses the emulator's server certificate, so the broker trusts it the way it
trusts Entra (``REQUESTS_CA_BUNDLE`` = the emulator's CA, set by the session fixture). It
records every request it receives. The ``downstream`` fixture is registered for all
integration tests in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorServer

GRAPH_SCOPE = f"{demo.GRAPH_RESOURCE}/.default"
CLAIMS_B64 = "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwidmFsdWUiOiIxNzAwMDAwMDAwIn19fQ=="
WAIT = 20.0


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def token(self) -> str:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        assert scheme == "Bearer", self.headers.get("Authorization", "")[:10]
        return token


@dataclass
class Downstream:
    url: str
    other_url: str
    seen: list[Seen] = field(default_factory=list)
    other_seen: list[Seen] = field(default_factory=list)
    cae_rejected: set[str] = field(default_factory=set)
    cae_always: bool = False

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


async def _record(request: web.Request, into: list[Seen]) -> Seen:
    seen = Seen(
        request.method, request.path, dict(request.query), dict(request.headers), await request.read()
    )
    into.append(seen)
    return seen


def _downstream_app(state: Downstream) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        seen = await _record(request, state.seen)
        body = {
            "method": seen.method,
            "path": seen.path,
            "query": seen.query,
            "body": seen.body.decode(),
            "authorization": seen.headers.get("Authorization"),
        }
        return web.json_response(body, headers={"X-Not-Content": "dropped", "Set-Cookie": "s=1; Path=/"})

    async def cae(request: web.Request) -> web.Response:
        seen = await _record(request, state.seen)
        if not state.cae_rejected or state.cae_always:
            state.cae_rejected.add(seen.token)  # the resource revokes the first token it sees
        if seen.token in state.cae_rejected:
            challenge = (
                'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                f'error="insufficient_claims", claims="{CLAIMS_B64}"'
            )
            return web.Response(status=401, text="revoked", headers={"WWW-Authenticate": challenge})
        return web.json_response({"ok": True})

    async def redirect(request: web.Request) -> web.Response:
        await _record(request, state.seen)
        raise web.HTTPFound("/api/landing")

    async def redirect_other(request: web.Request) -> web.Response:
        await _record(request, state.seen)
        raise web.HTTPFound(state.other_url + "/landing")

    async def big(request: web.Request) -> web.StreamResponse:
        await _record(request, state.seen)
        size = int(request.query.get("n", "0"))
        if request.query.get("chunked") == "1":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(size // 65536 + 1):
                await resp.write(b"x" * 65536)
            await resp.write_eof()
            return resp
        return web.Response(body=b"x" * size, content_type="text/plain")

    async def slow(request: web.Request) -> web.Response:
        await _record(request, state.seen)
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def fail(request: web.Request) -> web.Response:
        await _record(request, state.seen)
        return web.Response(status=500, text="downstream broke", content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/api/echo{tail:.*}", echo)
    app.router.add_route("*", "/api/cae", cae)
    app.router.add_get("/api/redirect", redirect)
    app.router.add_get("/api/redirect-other", redirect_other)
    app.router.add_get("/api/landing", echo)
    app.router.add_get("/api/big", big)
    app.router.add_get("/api/slow", slow)
    app.router.add_route("*", "/api/fail", fail)
    return app


@pytest.fixture
async def downstream(emulator: EmulatorServer) -> AsyncIterator[Downstream]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    state_dir = emulator.ca_path.parent
    tls.load_cert_chain(str(state_dir / "server-cert.pem"), str(state_dir / "server-key.pem"))
    state = Downstream(url="", other_url="")

    other = web.Application()

    async def landing(request: web.Request) -> web.Response:
        await _record(request, state.other_seen)
        return web.Response(text="other origin")

    other.router.add_get("/landing", landing)
    runners = [web.AppRunner(_downstream_app(state)), web.AppRunner(other)]
    for runner in runners:
        await runner.setup()
    main_site = web.TCPSite(runners[0], "127.0.0.1", 0, ssl_context=tls)
    other_site = web.TCPSite(runners[1], "127.0.0.1", 0)
    await main_site.start()
    await other_site.start()
    state.url = f"https://127.0.0.1:{runners[0].addresses[0][1]}"  # aiohttp's public bound addresses
    state.other_url = f"http://127.0.0.1:{runners[1].addresses[0][1]}"
    try:
        yield state
    finally:
        for runner in runners:
            await runner.cleanup()


def api_keys(downstream: Downstream, **extra: str) -> dict[str, str]:
    keys = {
        "DownstreamApis__down__BaseUrl": downstream.url + "/api",
        "DownstreamApis__down__RelativePath": "echo",
        "DownstreamApis__down__Scopes__0": GRAPH_SCOPE,
    }
    keys.update(extra)
    return keys


async def call(
    http: aiohttp.ClientSession,
    broker: RunningBroker,
    path: str,
    *,
    token: str | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    async with http.request(
        method,
        broker.api_urls[0] + path,
        data=data,
        headers=all_headers,
        timeout=aiohttp.ClientTimeout(total=WAIT),
    ) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else {})
