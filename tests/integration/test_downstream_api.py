"""``POST /DownstreamApi*``: a real HTTPS downstream API on loopback, called through the broker.

The downstream server uses the emulator's server certificate, so the broker trusts it
the way it trusts Entra (``REQUESTS_CA_BUNDLE`` = the emulator's CA, set by the
session fixture). It records every request it receives.
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
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import claims_of, get

A1 = demo.AGENT_1_ID
GRAPH_SCOPE = f"{demo.GRAPH_RESOURCE}/.default"
CLAIMS = {"access_token": {"nbf": {"essential": True, "value": "1700000000"}}}
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
    state.url = f"https://127.0.0.1:{main_site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    state.other_url = f"http://127.0.0.1:{other_site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
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


async def test_unauthenticated_route_calls_api_with_agent_token(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory(**api_keys(downstream)) as broker:
        status, body = await call(http, broker, f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}")
    assert status == 200, body
    assert body["statusCode"] == 200
    assert set(body) == {"statusCode", "headers", "content"}
    content = json.loads(body["content"])
    assert (
        content["method"] == "GET" and content["path"] == "/api/echo"
    )  # method from config, not the inbound POST
    (seen,) = downstream.seen
    claims = claims_of(seen.token)
    assert claims["oid"] == A1 and claims["idtyp"] == "app"
    # The token never comes back to the caller, even when the API echoes it.
    assert seen.token not in json.dumps(body)
    assert content["authorization"] == "Bearer [redacted]"
    # Content headers only (plus the few a caller acts on); the body's real length.
    assert body["headers"]["Content-Type"] == ["application/json; charset=utf-8"]
    assert "X-Not-Content" not in body["headers"] and "Set-Cookie" not in body["headers"]


async def test_authenticated_route_uses_obo_and_never_forwards_inbound_token(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    async with broker_factory(**api_keys(downstream, DownstreamApis__down__HttpMethod="PUT")) as broker:
        status, _ = await call(
            http, broker, "/DownstreamApi/down", data=b"{}", headers={"Content-Type": "a/b"}
        )
        assert status == 401  # no inbound token
        status, body = await call(
            http,
            broker,
            f"/DownstreamApi/down?AgentIdentity={A1}&optionsOverride.RelativePath=echo%2Fitems%2520x%3Ftop%3D5"
            "&optionsOverride.ExtraQueryParameters.$Select=id&optionsOverride.ExtraHeaderParameters.X-Trace=t1",
            token=user_token,
            data=b'{"name":"x"}',
            headers={"Content-Type": "application/json", "Cookie": "c=1", "X-Inbound": "no"},
        )
    assert status == 200, body
    assert body["statusCode"] == 200
    (seen,) = downstream.seen
    assert seen.method == "PUT"
    assert seen.path == "/api/echo/items x"
    assert seen.query == {"top": "5", "$Select": "id"}
    assert seen.body == b'{"name":"x"}'
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["X-Trace"] == "t1"
    assert "Cookie" not in seen.headers and "X-Inbound" not in seen.headers
    assert seen.token != user_token
    claims = claims_of(seen.token)
    assert claims["idtyp"] == "user" and claims["oid"] == demo.DEMO_USER_OID
    assert claims.get("azp", claims.get("appid")) == A1


async def test_downstream_failure_is_wrapped_with_outer_200(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    keys = api_keys(downstream, DownstreamApis__down__RelativePath="fail")
    async with broker_factory(**keys) as broker:
        status, body = await call(http, broker, f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}")
        assert status == 200, body
        assert body["statusCode"] == 500 and body["content"] == "downstream broke"
        # Only POST, as in Microsoft's sidecar.
        status, problem = await call(
            http, broker, f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}", method="GET"
        )
        assert status == 405, problem


async def test_cae_claims_challenge_reacquires_and_retries_once(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    keys = api_keys(downstream, DownstreamApis__down__RelativePath="cae")
    async with broker_factory(**keys) as broker:
        status, before, _ = await get(
            http, broker, f"/AuthorizationHeaderUnauthenticated/down?AgentIdentity={A1}"
        )
        assert status == 200, before
        since = admin.log()["last_seq"]
        status, body = await call(http, broker, f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}")
        assert status == 200, body
        assert body["statusCode"] == 200 and json.loads(body["content"]) == {"ok": True}
        assert [s.path for s in downstream.seen] == ["/api/cae", "/api/cae"], [
            (s.path, s.token[-8:]) for s in downstream.seen
        ]
        first, second = downstream.seen
        assert f"Bearer {first.token}" == before["authorizationHeader"]  # the cached token was tried first
        assert second.token != first.token
        assert claims_of(second.token)["oid"] == A1
        # The emulator saw exactly one new token request, carrying the decoded claims.
        requests = [r for r in admin.log(since)["requests"] if r["endpoint"] == "token"]
        assert len(requests) == 1, requests
        assert json.loads(requests[0]["claims"])["access_token"]["nbf"] == CLAIMS["access_token"]["nbf"]
        # The new token replaced the rejected one in the cache: the header route serves it now.
        status, after, _ = await get(
            http, broker, f"/AuthorizationHeaderUnauthenticated/down?AgentIdentity={A1}"
        )
        assert after["authorizationHeader"] == f"Bearer {second.token}"


async def test_cae_retry_happens_only_once(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    downstream.cae_always = True  # the API rejects every token
    keys = api_keys(downstream, DownstreamApis__down__RelativePath="cae")
    async with broker_factory(**keys) as broker:
        status, body = await call(http, broker, f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}")
    assert status == 200, body
    assert body["statusCode"] == 401 and body["content"] == "revoked"
    assert 'error="insufficient_claims"' in body["headers"]["WWW-Authenticate"][0]
    assert len(downstream.seen) == 2
    assert downstream.seen[0].token != downstream.seen[1].token


async def test_redirects_are_not_followed_by_default(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    keys = api_keys(downstream, DownstreamApis__down__RelativePath="redirect")
    async with broker_factory(**keys) as broker:
        status, body = await call(http, broker, f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}")
    assert status == 200, body
    assert body["statusCode"] == 302
    assert body["headers"]["Location"] == ["/api/landing"]
    assert downstream.paths() == ["/api/redirect"]


async def test_redirects_followed_when_allowed_without_leaking_token_cross_origin(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    keys = api_keys(
        downstream,
        DownstreamApis__down__RelativePath="redirect",
        Sidecar__AllowOutboundRedirects="true",
        Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated="true",
    )
    async with broker_factory(**keys) as broker:
        path = f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}"
        status, body = await call(http, broker, path)
        assert status == 200 and body["statusCode"] == 200, body
        assert downstream.paths() == ["/api/redirect", "/api/landing"]
        assert downstream.seen[1].token == downstream.seen[0].token  # same origin keeps the token
        status, body = await call(http, broker, path + "&optionsOverride.RelativePath=redirect-other")
    # The other origin is plain http: https -> http is refused (cross-origin rules:
    # tests/integration/test_transport_downstream.py).
    assert status == 502 and body["type"].endswith("downstream-redirect-refused"), body
    assert downstream.other_seen == []


async def test_relative_path_rejections_with_overrides_allowed(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    from urllib.parse import quote

    keys = api_keys(downstream, Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated="true")
    bad = [
        "https://evil.example/x",
        "//evil.example/x",
        "../x",
        "echo/../../x",
        "%2e%2e/x",
        "%252e%252e/x",
        "javascript:alert(1)",
        "echo\\x",
        "echo#f",
        "http:x",
    ]
    async with broker_factory(**keys) as broker:
        for relative in bad:
            path = f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}&optionsOverride.RelativePath={quote(relative)}"
            status, body = await call(http, broker, path)
            assert status == 400, (relative, body)
            assert body["parameter"] == "optionsOverride.RelativePath", body
        for header in ("Authorization", "Host", "Cookie"):
            path = f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}&optionsOverride.ExtraHeaderParameters.{header}=x"
            status, body = await call(http, broker, path)
            assert status == 400, (header, body)
        status, body = await call(
            http,
            broker,
            f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}&optionsOverride.RelativePath=echo/ok",
        )
        assert status == 200 and body["statusCode"] == 200, body
    assert downstream.paths() == ["/api/echo/ok"]


async def test_overrides_gated_on_unauthenticated_route(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory(**api_keys(downstream)) as broker:
        status, body = await call(
            http,
            broker,
            f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}&optionsOverride.HttpMethod=DELETE",
        )
    assert status == 400 and "CallDownstreamApiUnauthenticated" in body["detail"], body
    assert downstream.seen == []


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_response_size_cap(
    broker_factory: BrokerFactory,
    downstream: Downstream,
    http: aiohttp.ClientSession,
    admin: EmulatorAdmin,
    chunked: str,
) -> None:
    keys = api_keys(
        downstream,
        DownstreamApis__down__RelativePath=f"big?n=300000&chunked={chunked}",
        Broker__Downstream__MaxResponseBytes="200000",
    )
    async with broker_factory(**keys) as broker:
        status, body = await call(http, broker, f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}")
    assert status == 502, body
    assert "MaxResponseBytes" in body["detail"]


async def test_response_under_cap_and_timeout(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    keys = api_keys(
        downstream,
        DownstreamApis__down__RelativePath="big?n=1000",
        Broker__Downstream__TimeoutSeconds="1",
        Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated="true",
    )
    async with broker_factory(**keys) as broker:
        path = f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}"
        status, body = await call(http, broker, path)
        assert (
            status == 200 and body["content"] == "x" * 1000 and body["headers"]["Content-Length"] == ["1000"]
        )
        status, body = await call(http, broker, path + "&optionsOverride.RelativePath=slow")
    assert status == 504, body


async def test_configuration_and_body_errors(
    broker_factory: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    keys = api_keys(downstream, Broker__Downstream__MaxRequestBytes="10")
    async with broker_factory(**keys) as broker:
        # graph has scopes but no BaseUrl
        status, body = await call(http, broker, f"/DownstreamApiUnauthenticated/graph?AgentIdentity={A1}")
        assert status == 400 and "BaseUrl" in body["detail"], body
        path = f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}"
        status, body = await call(
            http, broker, path, data=b"0123456789abc", headers={"Content-Type": "text/plain"}
        )
        assert status == 413, body
        status, body = await call(http, broker, path, data=b"abc", headers={"Content-Type": ""})
        assert status == 400 and "Content-Type" in body["detail"], body
    assert downstream.seen == []
