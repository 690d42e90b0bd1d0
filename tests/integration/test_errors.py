"""Error shapes of the compatible routes: problem+json with a clear detail, never a token or traceback."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import get

A1 = demo.AGENT_1_ID
UNAUTH = "/AuthorizationHeaderUnauthenticated"


def assert_problem(status: int, body: dict[str, object], headers: object, expected: int) -> None:
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/problem+json")  # type: ignore[index]
    assert body["status"] == expected
    assert isinstance(body["title"], str) and isinstance(body["detail"], str) and body["type"]
    assert "Traceback" not in str(body)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        (
            f"?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}&AgentUserId={demo.AGENT_USER_OID}",
            "not both",
        ),
        (f"?AgentUsername={demo.AGENT_USER_UPN}", "require AgentIdentity"),
        (f"?AgentUserId={demo.AGENT_USER_OID}", "require AgentIdentity"),
        (f"?AgentIdentity={A1}&AgentUserId=not-a-guid", "AgentUserId must be a GUID"),
        ("?AgentIdentity=not-a-guid", "AgentIdentity must be a GUID"),
        (f"?AgentIdentity={A1}&AgentUsername=nope", "user principal name"),
        (f"?AgentIdentity={A1}&AgentIdentity={demo.AGENT_2_ID}", "only once"),
        (f"?AgentIdentity={A1}&optionsOverride.BaseUrl=https://evil.example", "not supported"),
        (f"?AgentIdentity={A1}&optionsOverride.Bogus=1", "optionsOverride.Bogus is not a query parameter"),
        (f"?AgentIdentiy={A1}", "did you mean AgentIdentity?"),
        (f"?AgentIdentity={A1}&optionsOverride.RelativePath=x", "of /DownstreamApi* only"),
        (f"?AgentIdentity={A1}&optionsOverride.Scopes=x", "not allowed on /AuthorizationHeaderUnauthenticated"),
    ],
)
async def test_bad_parameters_are_400(
    broker: RunningBroker, http: aiohttp.ClientSession, query: str, fragment: str
) -> None:
    status, body, headers = await get(http, broker, f"{UNAUTH}/graph{query}")
    assert_problem(status, body, headers, 400)
    assert fragment in str(body["detail"])


async def test_unknown_api_is_400_then_404_in_strict_mode(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory() as broker:
        status, body, headers = await get(http, broker, f"{UNAUTH}/nope?AgentIdentity={A1}")
        assert_problem(status, body, headers, 400)
        assert "No scopes found" in str(body["detail"])
    async with broker_factory(Broker__Strict="true") as broker:
        strict_header = {"X-Token-Broker-Request": "true"}  # strict mode requires it
        status, body, headers = await get(
            http, broker, f"{UNAUTH}/nope?AgentIdentity={A1}", headers=strict_header
        )
        assert_problem(status, body, headers, 404)


async def test_missing_and_invalid_bearer_are_401(
    broker: RunningBroker, http: aiohttp.ClientSession, emulator: object
) -> None:
    status, body, headers = await get(http, broker, f"/AuthorizationHeader/graph?AgentIdentity={A1}")
    assert_problem(status, body, headers, 401)
    assert headers["WWW-Authenticate"].startswith("Bearer")
    forged = jwt.encode(
        {"aud": demo.BLUEPRINT_APP_ID, "exp": int(time.time()) + 600, "iss": "x"}, "secret", algorithm="HS256"
    )
    status, body, headers = await get(
        http, broker, f"/AuthorizationHeader/graph?AgentIdentity={A1}", token=forged
    )
    assert_problem(status, body, headers, 401)
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert forged not in str(body)


async def test_expired_user_token_is_401(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    expired = admin.user_token(demo.DEMO_USER_UPN, lifetime=-600)
    status, body, headers = await get(
        http, broker, f"/AuthorizationHeader/graph?AgentIdentity={A1}", token=expired
    )
    assert_problem(status, body, headers, 401)
    assert "expired" in str(body["detail"])


async def test_entra_refusal_maps_to_401_with_aadsts_code(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    unknown_agent = "0badc0de-0000-4000-8000-000000000000"
    status, body, headers = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={unknown_agent}")
    assert_problem(status, body, headers, 401)
    assert str(body["errorCode"]).startswith("AADSTS")
    assert body.get("correlationId")


async def test_authority_unreachable_is_503_with_retry_after(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    admin.fault(target="token", mode="status", status=503)
    status, body, headers = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}")
    assert_problem(status, body, headers, 503)
    assert int(headers["Retry-After"]) >= 1
    admin.clear_faults()


async def test_throttled_is_503_with_entra_retry_after(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    admin.fault(target="token", mode="status", status=429, retry_after=7)
    status, body, headers = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}")
    assert_problem(status, body, headers, 503)
    assert int(headers["Retry-After"]) >= 6
    admin.clear_faults()


async def test_unknown_route_and_method(broker: RunningBroker, http: aiohttp.ClientSession) -> None:
    status, body, headers = await get(http, broker, "/nope")
    assert_problem(status, body, headers, 404)
    async with http.post(broker.api_urls[0] + "/AuthorizationHeader/graph") as resp:
        assert resp.status == 405
        assert resp.headers["Content-Type"].startswith("application/problem+json")


async def test_tenant_override_passes_through_and_agent_is_refused_outside_home_tenant(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    path = (
        f"/AuthorizationHeader/graph?AgentIdentity={A1}&optionsOverride.RequestAppToken=true"
        f"&optionsOverride.AcquireTokenOptions.Tenant={demo.OTHER_TENANT_ID}"
    )
    status, body, headers = await get(http, broker, path, token=user_token)
    assert_problem(status, body, headers, 401)
    assert str(body["errorCode"]).startswith("AADSTS")
    # The refusal came from the authority (the override reached it), not from the broker.
    refused = [r for r in admin.log()["requests"] if r["endpoint"] == "token" and r["error_code"]]
    assert refused and f"AADSTS{refused[-1]['error_code']}" == body["errorCode"]
