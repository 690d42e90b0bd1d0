"""The same policy on every token route, over real HTTP against the emulator.

Each test starts from the attack or mistake it guards against (issue 13: unknown parameters,
silent refusals; issue 14: the exchange audience, unknown APIs, the audience of a token sent
downstream, rate-limit holes) and asserts both the refusal and the victim's view: other
warmed keys are still served from cache, with no upstream request.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.downstream_server import Downstream, api_keys, call
from tests.integration.helpers import bearer_claims, get

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
UNAUTH = "/AuthorizationHeaderUnauthenticated"
MSI_SECRET = "policy-test-identity-header-0123"
MSI = {"Broker__ManagedIdentityEndpoint__Secret": MSI_SECRET}
EXCHANGE = "api://AzureADTokenExchange/.default"
WAIT = 20.0


async def msi_get(http: aiohttp.ClientSession, broker: RunningBroker, query: str) -> tuple[int, dict[str, Any]]:
    async with http.get(
        broker.api_urls[0] + "/msi/token?api-version=2019-08-01&" + query,
        headers={"X-IDENTITY-HEADER": MSI_SECRET},
        timeout=aiohttp.ClientTimeout(total=WAIT),
    ) as resp:
        return resp.status, await resp.json()


async def warm(http: aiohttp.ClientSession, broker: RunningBroker) -> dict[str, str]:
    """Two victims' tokens in the cache: agent A2's app token and the blueprint's own."""
    tokens = {}
    for path in (f"{UNAUTH}/graph?AgentIdentity={A2}", f"{UNAUTH}/demo"):
        status, body, _ = await get(http, broker, path)
        assert status == 200, body
        tokens[path] = body["authorizationHeader"]
    return tokens


async def assert_victims_served_from_cache(
    http: aiohttp.ClientSession, broker: RunningBroker, admin: EmulatorAdmin, tokens: dict[str, str]
) -> None:
    since = admin.last_seq()
    for path, header in tokens.items():
        status, body, _ = await get(http, broker, path)
        assert status == 200 and body["authorizationHeader"] == header, body
    assert admin.token_requests(since) == []


# -- issue 13: unknown parameters, explained refusals, the AzureAd__Scopes check ---------------


async def test_unknown_query_parameters_are_refused_on_every_token_route(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    user = admin.user_token(demo.DEMO_USER_UPN)
    async with broker_factory(**MSI, **api_keys(downstream)) as broker:
        since = admin.last_seq()
        for method, path, token in (
            ("GET", f"/AuthorizationHeader/graph?AgentIdentiy={A1}", user),
            ("GET", f"{UNAUTH}/graph?AgentIdentiy={A1}", None),
            ("POST", f"/DownstreamApi/down?AgentIdentiy={A1}", user),
            ("POST", f"/DownstreamApiUnauthenticated/down?AgentIdentiy={A1}", None),
        ):
            status, body = await call(http, broker, path, token=token, method=method)
            assert status == 400, (path, body)
            assert body["title"] == "unknown query parameter: AgentIdentiy", body
            assert "did you mean AgentIdentity?" in body["detail"] and "accepted names" in body["detail"]
        status, body = await msi_get(http, broker, f"resource={demo.GRAPH_RESOURCE}&clientid={A1}")
        assert status == 400 and "access_token" not in body
        assert body["error"] == "invalid_request" and "clientid is not a query parameter" in body["message"], body
        # Before the fix, the misspelt AgentIdentity silently got the blueprint's token.
        assert admin.token_requests(since) == [] and downstream.seen == []


async def test_a_gated_refusal_is_logged_once_per_cause_per_minute(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    flag = "Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated"
    async with broker_factory(Broker__AllowedAgentIdentities__0=A1) as broker:
        with caplog.at_level(logging.WARNING, logger="agent_token_broker.api.refusals"):
            for _ in range(3):
                status, body, _ = await get(http, broker, f"{UNAUTH}/graph?optionsOverride.Scopes={quote(demo.DEMO_API_RESOURCE)}")
                assert status == 400 and body["title"] == "override not allowed: optionsOverride.Scopes"
            status, body, _ = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A2}")
            assert status == 403 and body["title"] == "agent identity not allowed"
            status, _, _ = await get(http, broker, f"{UNAUTH}/graph?AgentIdentiy={A1}")  # not gated: not logged
            assert status == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "agent_token_broker.api.refusals"]
    assert lines == [
        f"refused a request on {UNAUTH}/{{api}} (HTTP 400, override not allowed: optionsOverride.Scopes); "
        f"the setting that decides this is {flag}",
        f"refused a request on {UNAUTH}/{{api}} (HTTP 403, agent identity not allowed); "
        "the setting that decides this is Broker__AllowedAgentIdentities",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name.endswith("refusals"))


async def test_validate_requires_one_of_azure_ad_scopes(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    async with broker_factory(AzureAd__Scopes=demo.BLUEPRINT_SCOPE) as broker:
        status, body, _ = await get(http, broker, "/Validate", token=admin.user_token(demo.DEMO_USER_UPN, scp="Other.Read"))
        assert status == 403 and body["type"].endswith("insufficient-scope") and "AzureAd__Scopes" in body["detail"]
        status, body, _ = await get(http, broker, "/Validate", token=admin.user_token(demo.DEMO_USER_UPN))
        assert status == 200 and body["claims"]["scp"] == demo.BLUEPRINT_SCOPE


# -- issue 14 finding 2: /msi/token has the header routes' policy ------------------------------


async def test_msi_refuses_agents_resources_and_the_exchange_audience_outside_policy(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    async with broker_factory(**MSI, Broker__AllowedAgentIdentities__0=A1, Broker__AllowedAgentIdentities__1=A2) as broker:
        victims = await warm(http, broker)
        since = admin.last_seq()
        status, body = await msi_get(http, broker, f"resource={demo.GRAPH_RESOURCE}&client_id={A1}")
        assert status == 200 and body["client_id"] == A1
        refusals = {
            f"resource={demo.GRAPH_RESOURCE}&client_id={uuid.uuid4()}": "Broker__AllowedAgentIdentities",
            f"resource=https://vault.azure.net&client_id={A1}": "Broker__ManagedIdentityEndpoint__AllowedResources",
        }
        for variant in ("api://AzureADTokenExchange", "api://azureadtokenexchange/", EXCHANGE, demo.TOKEN_EXCHANGE_APP_ID):
            refusals[f"resource={quote(variant, safe='')}&client_id={A1}"] = "token-exchange audience"
        for query, words in refusals.items():
            status, body = await msi_get(http, broker, query)
            assert status == 403, (query, body)
            assert "access_token" not in body and body["error"] == "access_denied" and words in body["message"], body
        assert {r["leg"] for r in admin.token_requests(since)} <= {"t1", "app"}  # only the allowed request
        await assert_victims_served_from_cache(http, broker, admin, victims)


# -- issue 14 finding 3: the exchange audience and unknown APIs ----------------------------------


async def test_no_route_mints_the_exchange_audience_for_a_caller_chosen_scope(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    user = admin.user_token(demo.DEMO_USER_UPN)
    keys = {**api_keys(downstream), "Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated": "true",
            "Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated": "true"}  # fmt: skip
    async with broker_factory(**keys) as broker:
        victims = await warm(http, broker)
        since = admin.last_seq()
        for scope in (EXCHANGE, "API://AzureADTokenExchange", "api://AzureAdTokenExchange//.default"):
            q = f"AgentIdentity={A1}&optionsOverride.RequestAppToken=true&optionsOverride.Scopes={quote(scope, safe='')}"
            for method, path, token in (
                ("GET", f"/AuthorizationHeader/graph?{q}", user),
                ("GET", f"/AuthorizationHeader/zzz?{q}", user),  # an unknown API skipped every check before
                ("GET", f"{UNAUTH}/graph?{q}", None),
                ("POST", f"/DownstreamApi/down?{q}", user),
                ("POST", f"/DownstreamApiUnauthenticated/down?{q}", None),
            ):
                status, body = await call(http, broker, path, token=token, method=method)
                assert status == 403 and body["type"].endswith("exchange-audience"), (path, body)
                assert "authorizationHeader" not in body
        assert admin.token_requests(since) == [] and downstream.seen == []
        await assert_victims_served_from_cache(http, broker, admin, victims)


async def test_override_scopes_on_an_unknown_api_respect_the_allow_lists(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    user = admin.user_token(demo.DEMO_USER_UPN)
    path = f"/AuthorizationHeader/zzz?AgentIdentity={A1}&optionsOverride.RequestAppToken=true"
    path += f"&optionsOverride.Scopes={demo.DEMO_API_RESOURCE}/.default"
    async with broker_factory(DownstreamApis__graph__AllowedScopes__0=f"{demo.GRAPH_RESOURCE}/.default") as broker:
        status, body, _ = await get(http, broker, path, token=user)
        assert status == 403 and body["type"].endswith("scope-not-allowed"), body
        assert "DownstreamApis__zzz" in body["detail"]
    async with broker_factory() as broker:  # no allow-list anywhere: Microsoft-compatible
        status, body, _ = await get(http, broker, path, token=user)
        assert status == 200 and bearer_claims(body)["aud"] == demo.DEMO_API_APP_ID, body


# -- issue 14 finding 4: one cache-miss limiter for every route --------------------------------


@pytest.mark.parametrize("family", ["header", "downstream", "msi"])
async def test_distinct_agent_floods_cost_at_most_the_burst_on_every_route(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession, downstream: Downstream, family: str
) -> None:
    burst = 5
    keys = {**MSI, **api_keys(downstream), "Broker__Limits__CacheMissBurst": str(burst),
            "Broker__Limits__CacheMissesPerSecond": "0.01"}  # fmt: skip
    async with broker_factory(**keys) as broker:
        status, body, _ = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A2}")
        assert status == 200, body
        victim = body["authorizationHeader"]
        since = admin.last_seq()
        statuses: dict[int, int] = {}
        for _ in range(200):
            agent = uuid.uuid4()
            if family == "header":
                status, _, _ = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={agent}")
            elif family == "downstream":
                status, _ = await call(http, broker, f"/DownstreamApiUnauthenticated/down?AgentIdentity={agent}")
            else:
                status, _ = await msi_get(http, broker, f"resource={demo.GRAPH_RESOURCE}&client_id={agent}")
            statuses[status] = statuses.get(status, 0) + 1
        upstream = admin.token_requests(since)
        assert len(upstream) <= burst, (len(upstream), statuses)
        assert statuses.get(429, 0) >= 200 - burst and statuses.get(200, 0) == 0, statuses
        status, body, _ = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A2}")  # hits are never limited
        assert status == 200 and body["authorizationHeader"] == victim
    assert downstream.seen == []


# -- issue 14 finding 6: a token goes only to the API it is for ----------------------------------


async def test_downstream_api_refuses_a_token_for_another_resource(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession, downstream: Downstream
) -> None:
    user = admin.user_token(demo.DEMO_USER_UPN)
    async with broker_factory(**api_keys(downstream)) as broker:
        since = admin.last_seq()
        status, body = await call(
            http, broker, f"/DownstreamApi/down?optionsOverride.Scopes={quote(demo.DEMO_API_RESOURCE)}/.default", token=user
        )
        assert status == 403 and body["type"].endswith("audience-not-for-api"), body
        assert downstream.seen == [] and admin.token_requests(since) == []
        # A scope of the API's own resource is still fine.
        status, body = await call(
            http, broker, f"/DownstreamApi/down?optionsOverride.Scopes={quote(demo.GRAPH_RESOURCE)}/User.Read", token=user
        )
        assert status == 200 and body["statusCode"] == 200, body
        assert len(downstream.seen) == 1


async def test_strict_mode_unknown_api_is_404_on_every_route(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    user = admin.user_token(demo.DEMO_USER_UPN)
    strict = {"X-Token-Broker-Request": "true"}
    async with broker_factory(Broker__Strict="true") as broker:
        for method, path, token in (
            ("GET", f"/AuthorizationHeader/nope?AgentIdentity={A1}", user),
            ("GET", f"{UNAUTH}/nope?AgentIdentity={A1}", None),
            ("POST", f"/DownstreamApi/nope?AgentIdentity={A1}", user),
            ("POST", f"/DownstreamApiUnauthenticated/nope?AgentIdentity={A1}", None),
        ):
            status, body = await call(http, broker, path, token=token, method=method, headers=strict)
            assert status == 404 and body["title"] == "unknown API: nope", (path, body)
