"""Every flow through the compatible routes, against the emulator over real HTTPS with MSAL in the loop."""

from __future__ import annotations

from typing import Any

import aiohttp

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.helpers import bearer_claims, get

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
UNAUTH = "/AuthorizationHeaderUnauthenticated"


def legs(admin: EmulatorAdmin) -> dict[str, int]:
    return {k: v for k, v in admin.counts().items() if v}


def user_claims(status: int, body: dict[str, Any], oid: str, client: str) -> dict[str, Any]:
    """The claims of a delegated token for user ``oid`` issued to ``client`` (agent or blueprint)."""
    assert status == 200, body
    claims = bearer_claims(body)
    assert claims["idtyp"] == "user" and claims["oid"] == oid, claims
    assert claims.get("azp", claims.get("appid")) == client, claims
    return claims


async def test_autonomous_agent_token_and_cache(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    status, body, headers = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}")
    assert status == 200, body
    claims = bearer_claims(body)
    assert claims["oid"] == A1 and claims["sub"] == A1
    assert claims["idtyp"] == "app"
    assert claims["xms_par_app_azp"] == demo.BLUEPRINT_APP_ID
    assert claims["aud"] in (demo.GRAPH_RESOURCE, "00000003-0000-0000-c000-000000000000")
    assert "no-store" in headers["Cache-Control"]
    before = legs(admin)
    assert before.get("t1") == 1 and before.get("app") == 1, before

    # A second request for the cached token makes no upstream request.
    status, body2, _ = await get(http, broker, f"{UNAUTH}/graph?agentidentity={A1}")
    assert status == 200 and body2 == body
    assert legs(admin) == before

    # A new agent identity costs exactly one T1 and one token request, and no discovery.
    status, body3, _ = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A2}")
    assert status == 200
    assert bearer_claims(body3)["oid"] == A2
    after = legs(admin)
    assert after.get("t1") == 2 and after.get("app") == 2, after
    assert after.get("discovery", 0) == before.get("discovery", 0)


async def test_agent_user_token_by_upn_and_oid(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    status, body, _ = await get(
        http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}"
    )
    user_claims(status, body, demo.AGENT_USER_OID, A1)
    counts = legs(admin)
    assert counts.get("t1") == 1 and counts.get("t2") == 1 and counts.get("user_fic") == 1, counts

    status, body, _ = await get(
        http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUserId={demo.AGENT_USER_OID}"
    )
    user_claims(status, body, demo.AGENT_USER_OID, A1)
    counts = legs(admin)
    # T1 and T2 are cached per agent: only the user_fic leg is new.
    assert counts.get("t1") == 1 and counts.get("t2") == 1 and counts.get("user_fic") == 2, counts


async def test_agent_obo_with_inbound_user_token(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    status, body, _ = await get(
        http, broker, f"/AuthorizationHeader/graph?AgentIdentity={A1}", token=user_token
    )
    user_claims(status, body, demo.DEMO_USER_OID, A1)
    counts = legs(admin)
    assert counts.get("t1") == 1 and counts.get("obo") == 1, counts
    # Same user token again: served from cache.
    status, body2, _ = await get(
        http, broker, f"/AuthorizationHeader/graph?AgentIdentity={A1}", token=user_token
    )
    assert status == 200 and body2 == body
    assert legs(admin) == counts


async def test_blueprint_app_and_obo_tokens(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    status, body, _ = await get(http, broker, f"{UNAUTH}/graph")
    assert status == 200, body
    assert bearer_claims(body).get("azp", bearer_claims(body).get("appid")) == demo.BLUEPRINT_APP_ID
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    status, body, _ = await get(http, broker, "/AuthorizationHeader/graph", token=user_token)
    user_claims(status, body, demo.DEMO_USER_OID, demo.BLUEPRINT_APP_ID)
    counts = legs(admin)
    assert counts.get("blueprint_app") == 1 and counts.get("blueprint_obo") == 1, counts


async def test_request_app_token_on_authenticated_route(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    status, body, _ = await get(
        http,
        broker,
        f"/AuthorizationHeader/graph?AgentIdentity={A1}&optionsOverride.RequestAppToken=true",
        token=user_token,
    )
    assert status == 200, body
    assert bearer_claims(body)["idtyp"] == "app"


async def test_scopes_override_and_force_refresh(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    path = f"/AuthorizationHeader/anything?AgentIdentity={A1}&optionsOverride.Scopes={demo.DEMO_API_RESOURCE}/.default"
    status, body, _ = await get(
        http, broker, path + "&optionsOverride.RequestAppToken=true", token=user_token
    )
    assert status == 200, body
    assert bearer_claims(body)["aud"].startswith(demo.DEMO_API_RESOURCE) or bearer_claims(body)["aud"]
    before = legs(admin).get("app", 0)
    status, body2, _ = await get(
        http,
        broker,
        path + "&optionsOverride.RequestAppToken=true&optionsOverride.AcquireTokenOptions.ForceRefresh=true",
        token=user_token,
    )
    assert status == 200, body2
    assert legs(admin).get("app", 0) == before + 1
    assert body2 != body


async def test_validate_returns_claims(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    status, body, _ = await get(http, broker, "/Validate", token=user_token)
    assert status == 200, body
    assert body["protocol"] == "Bearer"
    assert body["token"] == user_token
    assert body["claims"]["oid"] == demo.DEMO_USER_OID
    assert body["claims"]["aud"] == demo.BLUEPRINT_APP_ID


async def test_healthz_on_api_and_ops(broker: RunningBroker, http: aiohttp.ClientSession) -> None:
    async with http.get(broker.api_urls[0] + "/healthz") as resp:
        assert resp.status == 200 and await resp.text() == "Healthy"
    assert broker.ops_url is not None
    async with http.get(broker.ops_url + "/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["ready"] is True
