"""Issue 15 items 2-4: redirects, BaseUrl path escapes, refused headers, parser edge cases.

Real sockets throughout: the broker talks to two HTTPS downstream servers on loopback
(two origins: ``127.0.0.1:<a>`` and ``localhost:<b>``) signed by the emulator's CA, and the
raw-request tests write bytes on a TCP connection.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory
from tests.integration.security_helpers import assert_raw_problem, get_bytes, raw_request

A1 = demo.AGENT_1_ID
GRAPH_SCOPE = f"{demo.GRAPH_RESOURCE}/.default"
UNAUTH = f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}"
ADMIN_SECRET = "transport-admin-secret-0123456789"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Servers:
    url: str = ""
    other_url: str = ""
    plain_url: str = ""
    seen: list[Seen] = field(default_factory=list)
    other_seen: list[Seen] = field(default_factory=list)


async def _record(request: web.Request, into: list[Seen]) -> None:
    into.append(Seen(request.method, request.path_qs, dict(request.headers), await request.read()))


@pytest.fixture
async def servers(emulator: EmulatorServer) -> AsyncIterator[Servers]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    state_dir = emulator.ca_path.parent
    tls.load_cert_chain(str(state_dir / "server-cert.pem"), str(state_dir / "server-key.pem"))
    state = Servers()

    async def echo(request: web.Request) -> web.Response:
        await _record(request, state.seen)
        return web.json_response({"path": request.path_qs})

    def redirect_to(target: str, status: int) -> Any:
        async def handler(request: web.Request) -> web.Response:
            await _record(request, state.seen)
            base = {"other": state.other_url, "plain": state.plain_url, "same": state.url}[target]
            return web.Response(status=status, headers={"Location": base + "/landing"})

        return handler

    async def deep_challenge(request: web.Request) -> web.Response:
        await _record(request, state.seen)
        deep = base64.b64encode(("[" * 2000 + "]" * 2000).encode()).decode()
        challenge = f'Bearer error="insufficient_claims", claims="{deep}"'
        return web.Response(status=401, text="no", headers={"WWW-Authenticate": challenge})

    main = web.Application()
    main.router.add_route("*", "/api/echo{tail:.*}", echo)
    main.router.add_route("*", "/landing", echo)
    for target in ("other", "plain", "same"):
        for status in (302, 303, 307, 308):
            main.router.add_route("*", f"/api/{target}-{status}", redirect_to(target, status))
    main.router.add_route("*", "/api/deep-challenge", deep_challenge)

    async def landing(request: web.Request) -> web.Response:
        await _record(request, state.other_seen)
        return web.Response(text="other origin")

    other = web.Application()
    other.router.add_route("*", "/landing", landing)
    runners = [web.AppRunner(main), web.AppRunner(other), web.AppRunner(other)]
    for runner in runners:
        await runner.setup()
    sites = [
        web.TCPSite(runners[0], "127.0.0.1", 0, ssl_context=tls),
        web.TCPSite(runners[1], "localhost", 0, ssl_context=tls),
        web.TCPSite(runners[2], "127.0.0.1", 0),
    ]
    for site in sites:
        await site.start()
    ports = [runner.addresses[0][1] for runner in runners]  # one site per runner
    state.url = f"https://127.0.0.1:{ports[0]}"
    state.other_url = f"https://localhost:{ports[1]}"
    state.plain_url = f"http://127.0.0.1:{ports[2]}"
    try:
        yield state
    finally:
        for runner in runners:
            await runner.cleanup()


def keys(servers: Servers, relative: str = "echo", **extra: str) -> dict[str, str]:
    return {
        "DownstreamApis__down__BaseUrl": servers.url + "/api",
        "DownstreamApis__down__RelativePath": relative,
        "DownstreamApis__down__Scopes__0": GRAPH_SCOPE,
        "Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated": "true",
        **extra,
    }


@pytest.fixture
def down_broker(broker_factory: BrokerFactory, servers: Servers, admin: EmulatorAdmin) -> BrokerFactory:
    """``async with down_broker(relative, Key=value, ...) as b``: a broker (on a freshly reset emulator)
    whose API ``down`` calls ``servers`` at ``relative`` (``keys``)."""
    return lambda relative="echo", **extra: broker_factory(**keys(servers, relative, **extra))


async def call(
    http: aiohttp.ClientSession, broker: RunningBroker, path: str, data: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"} if data else {}
    async with http.post(
        broker.api_urls[0] + path, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=20)
    ) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else {}


# -- item 2: redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [302, 303, 307, 308])
async def test_cross_origin_redirect_carries_no_caller_material(
    down_broker: BrokerFactory,
    servers: Servers,
    http: aiohttp.ClientSession,
    status: int,
) -> None:
    path = (
        UNAUTH
        + "&optionsOverride.ExtraHeaderParameters.X-Trace=caller-secret"
        + "&optionsOverride.AcceptHeader=application/x-caller"
    )
    async with down_broker(f"other-{status}", Sidecar__AllowOutboundRedirects="true") as broker:
        code, body = await call(http, broker, path)
    assert code == 200 and body["statusCode"] == 200 and body["content"] == "other origin", body
    (first,) = servers.seen
    assert first.headers["X-Trace"] == "caller-secret" and first.headers["Authorization"].startswith("Bearer ")
    (landed,) = servers.other_seen
    assert landed.method == "GET" and landed.body == b""
    assert "Authorization" not in landed.headers
    assert "caller-secret" not in json.dumps(landed.headers)
    assert "application/x-caller" not in json.dumps(landed.headers)


@pytest.mark.parametrize("status", [307, 308])
async def test_cross_origin_redirect_that_would_resend_a_body_is_refused(
    down_broker: BrokerFactory,
    servers: Servers,
    http: aiohttp.ClientSession,
    status: int,
) -> None:
    async with down_broker(
        f"other-{status}", Sidecar__AllowOutboundRedirects="true", DownstreamApis__down__HttpMethod="POST"
    ) as broker:
        code, body = await call(http, broker, UNAUTH, data=b'{"secret": "caller body"}')
    assert code == 502 and body["type"].endswith("downstream-redirect-refused"), body
    assert servers.other_seen == []
    assert servers.seen[0].body == b'{"secret": "caller body"}'


async def test_same_origin_307_resends_body_and_token(
    down_broker: BrokerFactory, servers: Servers, http: aiohttp.ClientSession
) -> None:
    async with down_broker(
        "same-307", Sidecar__AllowOutboundRedirects="true", DownstreamApis__down__HttpMethod="POST"
    ) as broker:
        code, body = await call(http, broker, UNAUTH, data=b'{"a": 1}')
    assert code == 200 and body["statusCode"] == 200, body
    first, second = servers.seen
    assert second.path == "/landing" and second.method == "POST" and second.body == b'{"a": 1}'
    assert second.headers["Authorization"] == first.headers["Authorization"]


async def test_redirect_from_https_to_http_is_refused(
    down_broker: BrokerFactory, http: aiohttp.ClientSession
) -> None:
    async with down_broker("plain-302", Sidecar__AllowOutboundRedirects="true") as broker:
        code, body = await call(http, broker, UNAUTH)
    assert code == 502 and body["type"].endswith("downstream-redirect-refused"), body
    assert "https to http" in body["detail"]


# -- item 3: path boundary and refused headers -----------------------------------------------------

ESCAPES = [
    "..;/x",
    "echo/..;/..;/x",
    "echo/..;jsessionid=1/x",
    ".;/x",
    "%2e%2e;/x",
    "%2e%2e%3b/x",
    "echo%2f..%2f..%2fx",
    "%25252e%25252e/x",
    "%2525252e%2525252e/x",
    "%ef%bc%8e%ef%bc%8e/x",
    "echo/.../x",
    "echo/..%20/x",
    "echo/..%00/x",
    "echo/%5c..%5cx",
]


async def assert_refused(
    http: aiohttp.ClientSession, broker: RunningBroker, servers: Servers, overrides: list[tuple[str, str]]
) -> None:
    """Each override (parameter, value) is a 400 naming its parameter, and none reaches the API."""
    for parameter, value in overrides:
        code, body = await call(http, broker, UNAUTH + f"&{parameter}={quote(value)}")
        assert code == 400, (parameter, value, body)
        assert body["parameter"] == parameter, body
    assert servers.seen == []


async def test_base_url_path_is_a_boundary_after_normalisation(
    down_broker: BrokerFactory, servers: Servers, http: aiohttp.ClientSession
) -> None:
    async with down_broker() as broker:
        await assert_refused(http, broker, servers, [("optionsOverride.RelativePath", path) for path in ESCAPES])
        # Path parameters and dots inside names are fine.
        code, body = await call(http, broker, UNAUTH + "&optionsOverride.RelativePath=" + quote("echo/a;v=1/b.c"))
        assert code == 200 and body["statusCode"] == 200, body
    assert [s.path for s in servers.seen] == ["/api/echo/a;v=1/b.c"]


REFUSED_HEADERS = [
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Real-IP",
    "Via",
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Proxy-Authorization",
    "Proxy-Anything",
    "Host",
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Prefix",
    "Metadata",
    "X-IDENTITY-HEADER",
]


async def test_routing_override_and_hop_by_hop_headers_are_refused(
    down_broker: BrokerFactory, servers: Servers, http: aiohttp.ClientSession
) -> None:
    async with down_broker() as broker:
        await assert_refused(
            http, broker, servers, [(f"optionsOverride.ExtraHeaderParameters.{name}", "x") for name in REFUSED_HEADERS]
        )
        code, body = await call(http, broker, UNAUTH + "&optionsOverride.ExtraHeaderParameters.X-Trace=t")
        assert code == 200, body
    assert servers.seen[0].headers["X-Trace"] == "t"


# -- item 4: parser edge cases ---------------------------------------------------------------------


async def test_deeply_nested_claims_json_is_a_clean_400(broker: RunningBroker, admin: EmulatorAdmin) -> None:
    deep = quote("[" * 1500 + "]" * 1500)
    target = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}&optionsOverride.AcquireTokenOptions.Claims={deep}"
    reply = await raw_request(broker, get_bytes(target))
    body = assert_raw_problem(reply, 400)
    assert body["parameter"] == "optionsOverride.AcquireTokenOptions.Claims"
    assert "deeper" in body["detail"]


async def test_deeply_nested_admin_body_is_a_clean_400(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory(Broker__Cache__AdminSecret=ADMIN_SECRET) as broker:
        assert broker.ops_url is not None
        async with http.post(
            broker.ops_url + "/admin/cache/clear",
            data=b"[" * 5000 + b"]" * 5000,
            headers={"Authorization": f"Bearer {ADMIN_SECRET}", "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400, await resp.text()
            assert resp.content_type == "application/problem+json"


async def test_deeply_nested_claims_challenge_from_downstream_is_not_a_500(
    down_broker: BrokerFactory, servers: Servers, http: aiohttp.ClientSession
) -> None:
    async with down_broker("deep-challenge") as broker:
        code, body = await call(http, broker, UNAUTH)
    assert code == 200 and body["statusCode"] == 401, body
    assert len(servers.seen) == 1  # not a usable challenge: no retry


async def test_http09_request_line_gets_400(broker: RunningBroker, admin: EmulatorAdmin) -> None:
    target = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
    reply = await raw_request(broker, f"GET {target}\r\n\r\n".encode())
    assert reply.status == 400, reply
    assert b"authorizationHeader" not in reply.body


async def test_request_without_host_gets_400(broker: RunningBroker, admin: EmulatorAdmin) -> None:
    target = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
    reply = await raw_request(broker, f"GET {target} HTTP/1.0\r\n\r\n".encode())
    body = assert_raw_problem(reply, 400)
    assert body["type"].endswith("missing-host")
    reply = await raw_request(broker, f"GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert reply.status == 200 and b"authorizationHeader" in reply.body
