"""Caller checks on the API listener: proxy/browser signals, Host, required header, exact paths,
the Unix socket's file mode, parser limits. Every refusal is a problem+json 4xx."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import aiohttp
import pytest

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import get
from tests.integration.security_helpers import (
    STRICT_HEADER,
    assert_problem_parts,
    assert_raw_problem,
    get_bytes,
    raw_request,
)

A1 = demo.AGENT_1_ID
TOKEN_PATH = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"


@pytest.mark.parametrize(
    ("headers", "slug"),
    [
        ({"X-Forwarded-For": "203.0.113.9"}, "proxied-request"),
        ({"X-Forwarded-Host": "evil.example"}, "proxied-request"),
        ({"Forwarded": "for=203.0.113.9"}, "proxied-request"),
        ({"X-Real-IP": "203.0.113.9"}, "proxied-request"),
        ({"Origin": "https://evil.example"}, "browser-request"),
        ({"Origin": "null"}, "browser-request"),
        ({"Sec-Fetch-Site": "cross-site"}, "browser-request"),
        ({"Sec-Fetch-Site": "same-site"}, "browser-request"),
        ({"Sec-Fetch-Mode": "no-cors"}, "browser-request"),
        ({"Sec-Fetch-Dest": "image"}, "browser-request"),
        ({"Host": "evil.example"}, "host-not-allowed"),
        ({"Host": "rebind.attacker.example:5000"}, "host-not-allowed"),
        ({"Host": "203.0.113.9"}, "host-not-allowed"),
    ],
)
async def test_proxy_browser_and_host_signals_are_refused(
    broker: RunningBroker, http: aiohttp.ClientSession, headers: dict[str, str], slug: str
) -> None:
    for path in (TOKEN_PATH, "/Validate"):
        status, body, resp_headers = await get(http, broker, path, headers=headers)
        assert_problem_parts(status, resp_headers["Content-Type"], body, 403)
        assert body["type"].endswith(slug), body
    # Probes are exempt from the caller checks.
    status, _, _ = await get(http, broker, "/healthz", headers=headers)
    assert status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "localhost"},
        {"Host": "localhost:5000"},
        {"Host": "127.0.0.1"},
        {"Host": "127.0.0.5:80"},
        {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
        {"User-Agent": "python-requests/2.32", "Accept": "*/*"},
    ],
)
async def test_local_clients_pass(
    broker: RunningBroker, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, body, _ = await get(http, broker, TOKEN_PATH, headers=headers)
    assert status == 200, body


async def test_allowed_hosts_extend_the_host_check(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory(Broker__AllowedHosts__0="broker.agents.svc") as broker:
        status, body, _ = await get(http, broker, TOKEN_PATH, headers={"Host": "broker.agents.svc:5000"})
        assert status == 200, body
        status, body, headers = await get(http, broker, TOKEN_PATH, headers={"Host": "evil.example"})
        assert_problem_parts(status, headers["Content-Type"], body, 403)


async def test_required_header_is_off_by_default_and_on_in_strict_mode(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory() as broker:
        status, body, _ = await get(http, broker, TOKEN_PATH)
        assert status == 200, body  # Microsoft's sidecar clients keep working
    async with broker_factory(Broker__Strict="true") as broker:
        for bad in ({}, {"X-Token-Broker-Request": "false"}, {"X-Token-Broker-Request": "TRUE1"}):
            status, body, headers = await get(http, broker, TOKEN_PATH, headers=bad)
            assert_problem_parts(status, headers["Content-Type"], body, 400)
            assert body["type"].endswith("missing-required-header")
            assert "X-Token-Broker-Request: true" in body["detail"]
        status, body, _ = await get(http, broker, TOKEN_PATH, headers=STRICT_HEADER)
        assert status == 200, body
        status, _, _ = await get(http, broker, "/healthz")
        assert status == 200


async def test_required_header_name_and_value_are_configurable(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory(
        Broker__RequireHeader__Enabled="true",
        Broker__RequireHeader__Name="Metadata",
        Broker__RequireHeader__Value="true",
    ) as broker:
        status, body, headers = await get(http, broker, TOKEN_PATH, headers=STRICT_HEADER)
        assert_problem_parts(status, headers["Content-Type"], body, 400)
        status, body, _ = await get(http, broker, TOKEN_PATH, headers={"Metadata": "true"})
        assert status == 200, body
    async with broker_factory(Broker__Strict="true", Broker__RequireHeader__Enabled="false") as broker:
        status, body, _ = await get(http, broker, TOKEN_PATH)
        assert status == 200, body


@pytest.mark.parametrize(
    "target",
    [
        f"/AuthorizationHeaderUnauthenticated%2Fgraph?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated%2fgraph?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated\\graph?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated%5Cgraph?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated//graph?AgentIdentity={A1}",
        f"//AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated/./graph?AgentIdentity={A1}",
        f"/Validate/../AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated/%2e%2e/graph?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated/%67raph?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated/graph%00?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated/graph;x=1?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated/graph:?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated/graph.?AgentIdentity={A1}",
        f"/AuthorizationHeaderUnauthenticated/graph/?AgentIdentity={A1}",
        f"http://127.0.0.1/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}",
        "*",
    ],
)
async def test_unnormalised_paths_are_400(broker: RunningBroker, target: str) -> None:
    reply = await raw_request(broker, get_bytes(target))
    body = assert_raw_problem(reply, 400)
    assert body["type"].endswith(("bad-path", "bad-api-name", "bad-http")), body
    assert "authorizationHeader" not in reply.body.decode()


async def test_exact_path_still_works_over_raw_http(broker: RunningBroker) -> None:
    reply = await raw_request(broker, get_bytes(TOKEN_PATH))
    assert reply.status == 200, reply.body
    assert reply.json["authorizationHeader"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (get_bytes("/Validate", {"X-Big": "a" * 9000}), 431),
        (get_bytes("/Validate?" + "a" * 17000), 431),
        (get_bytes(TOKEN_PATH + "&x=" + "a" * 13000), 414),
        (get_bytes("/Validate", {f"X-H{i}": "1" for i in range(70)}), 431),
        (b"GET /Validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello", 413),
        (b"POST /Validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /Validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /Validate HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n", 400),
        (b"GET /Validate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer eyJ\x01secret\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
    ],
)
async def test_oversized_and_malformed_requests_are_problem_json(
    broker: RunningBroker, data: bytes, status: int
) -> None:
    reply = await raw_request(broker, data)
    assert_raw_problem(reply, status)
    assert b"secret" not in reply.body


async def test_unix_socket_mode_is_configurable(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, tmp_path: Path
) -> None:
    sock = tmp_path / "api.sock"
    async with broker_factory(Broker__Listen=f"unix:{sock}", Broker__UnixSocketMode="0600") as broker:
        assert broker.api_urls == [f"unix:{sock}"]
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        connector = aiohttp.UnixConnector(path=str(sock))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get("http://localhost" + TOKEN_PATH) as resp:
                assert resp.status == 200, await resp.text()
            # On the Unix socket the Host header does not matter (no browser can connect).
            async with session.get("http://anything.example" + TOKEN_PATH) as resp:
                assert resp.status == 200
            async with session.get(
                "http://localhost" + TOKEN_PATH, headers={"X-Forwarded-For": "1.2.3.4"}
            ) as resp:
                assert resp.status == 403
                assert resp.headers["Content-Type"].startswith("application/problem+json")
