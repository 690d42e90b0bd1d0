"""``POST /DownstreamApi*``: a real HTTPS downstream API on loopback, called through the broker.

The downstream server (``tests/integration/downstream_server.py``) records every request it receives.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.downstream_server import Downstream, api_keys, call
from tests.integration.helpers import claims_of, get

A1 = demo.AGENT_1_ID
DOWN = f"/DownstreamApiUnauthenticated/down?AgentIdentity={A1}"  # the test API, unauthenticated route
CLAIMS = {"access_token": {"nbf": {"essential": True, "value": "1700000000"}}}


@pytest.fixture
def down_broker(broker_factory: BrokerFactory, downstream: Downstream, admin: EmulatorAdmin) -> BrokerFactory:
    """``async with down_broker(Key=value, ...) as b``: a broker calling the test API ``down``."""
    return lambda **keys: broker_factory(**api_keys(downstream, **keys))


async def test_unauthenticated_route_calls_api_with_agent_token(
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    async with down_broker() as broker:
        status, body = await call(http, broker, DOWN)
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
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    async with down_broker(DownstreamApis__down__HttpMethod="PUT") as broker:
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
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    async with down_broker(DownstreamApis__down__RelativePath="fail") as broker:
        status, body = await call(http, broker, DOWN)
        assert status == 200, body
        assert body["statusCode"] == 500 and body["content"] == "downstream broke"
        # Only POST, as in Microsoft's sidecar.
        status, problem = await call(http, broker, DOWN, method="GET")
        assert status == 405, problem


async def test_cae_claims_challenge_reacquires_and_retries_once(
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with down_broker(DownstreamApis__down__RelativePath="cae") as broker:
        status, before, _ = await get(
            http, broker, f"/AuthorizationHeaderUnauthenticated/down?AgentIdentity={A1}"
        )
        assert status == 200, before
        since = admin.log()["last_seq"]
        status, body = await call(http, broker, DOWN)
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
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    downstream.cae_always = True  # the API rejects every token
    async with down_broker(DownstreamApis__down__RelativePath="cae") as broker:
        status, body = await call(http, broker, DOWN)
    assert status == 200, body
    assert body["statusCode"] == 401 and body["content"] == "revoked"
    assert 'error="insufficient_claims"' in body["headers"]["WWW-Authenticate"][0]
    assert len(downstream.seen) == 2
    assert downstream.seen[0].token != downstream.seen[1].token


async def test_redirects_are_not_followed_by_default(
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    async with down_broker(DownstreamApis__down__RelativePath="redirect") as broker:
        status, body = await call(http, broker, DOWN)
    assert status == 200, body
    assert body["statusCode"] == 302
    assert body["headers"]["Location"] == ["/api/landing"]
    assert downstream.paths() == ["/api/redirect"]


async def test_redirects_followed_when_allowed_without_leaking_token_cross_origin(
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    async with down_broker(
        DownstreamApis__down__RelativePath="redirect",
        Sidecar__AllowOutboundRedirects="true",
        Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated="true",
    ) as broker:
        status, body = await call(http, broker, DOWN)
        assert status == 200 and body["statusCode"] == 200, body
        assert downstream.paths() == ["/api/redirect", "/api/landing"]
        assert downstream.seen[1].token == downstream.seen[0].token  # same origin keeps the token
        status, body = await call(http, broker, DOWN + "&optionsOverride.RelativePath=redirect-other")
    # The other origin is plain http: https -> http is refused (cross-origin rules:
    # tests/integration/test_transport_downstream.py).
    assert status == 502 and body["type"].endswith("downstream-redirect-refused"), body
    assert downstream.other_seen == []


async def test_relative_path_rejections_with_overrides_allowed(
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    from urllib.parse import quote

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
    async with down_broker(Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated="true") as broker:
        for relative in bad:
            path = DOWN + f"&optionsOverride.RelativePath={quote(relative)}"
            status, body = await call(http, broker, path)
            assert status == 400, (relative, body)
            assert body["parameter"] == "optionsOverride.RelativePath", body
        for header in ("Authorization", "Host", "Cookie"):
            path = DOWN + f"&optionsOverride.ExtraHeaderParameters.{header}=x"
            status, body = await call(http, broker, path)
            assert status == 400, (header, body)
        status, body = await call(http, broker, DOWN + "&optionsOverride.RelativePath=echo/ok")
        assert status == 200 and body["statusCode"] == 200, body
    assert downstream.paths() == ["/api/echo/ok"]


async def test_overrides_gated_on_unauthenticated_route(
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    async with down_broker() as broker:
        status, body = await call(http, broker, DOWN + "&optionsOverride.HttpMethod=DELETE")
    assert status == 400 and "CallDownstreamApiUnauthenticated" in body["detail"], body
    assert downstream.seen == []


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_response_size_cap(
    down_broker: BrokerFactory,
    downstream: Downstream,
    http: aiohttp.ClientSession,
    chunked: str,
) -> None:
    async with down_broker(
        DownstreamApis__down__RelativePath=f"big?n=300000&chunked={chunked}",
        Broker__Downstream__MaxResponseBytes="200000",
    ) as broker:
        status, body = await call(http, broker, DOWN)
    assert status == 502, body
    assert "MaxResponseBytes" in body["detail"]


async def test_response_under_cap_and_timeout(
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    async with down_broker(
        DownstreamApis__down__RelativePath="big?n=1000",
        Broker__Downstream__TimeoutSeconds="1",
        Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated="true",
    ) as broker:
        status, body = await call(http, broker, DOWN)
        assert (
            status == 200 and body["content"] == "x" * 1000 and body["headers"]["Content-Length"] == ["1000"]
        )
        status, body = await call(http, broker, DOWN + "&optionsOverride.RelativePath=slow")
    assert status == 504, body


async def test_configuration_and_body_errors(
    down_broker: BrokerFactory, downstream: Downstream, http: aiohttp.ClientSession
) -> None:
    async with down_broker(Broker__Downstream__MaxRequestBytes="10") as broker:
        # graph has scopes but no BaseUrl
        status, body = await call(http, broker, f"/DownstreamApiUnauthenticated/graph?AgentIdentity={A1}")
        assert status == 400 and "BaseUrl" in body["detail"], body
        status, body = await call(
            http, broker, DOWN, data=b"0123456789abc", headers={"Content-Type": "text/plain"}
        )
        assert status == 413, body
        status, body = await call(http, broker, DOWN, data=b"abc", headers={"Content-Type": ""})
        assert status == 400 and "Content-Type" in body["detail"], body
    assert downstream.seen == []
