"""Least privilege and abuse limits through the HTTP routes (403/429/503 problem+json)."""

from __future__ import annotations

import asyncio

import aiohttp

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import get, wait_for_metric
from tests.integration.security_helpers import STRICT_HEADER, assert_problem_parts

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
GRAPH = "https://graph.microsoft.com"
UNAUTH = "/AuthorizationHeaderUnauthenticated"


async def test_override_scopes_outside_the_allow_list_are_403(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    user = admin.user_token(demo.DEMO_USER_UPN)
    path = f"/AuthorizationHeader/graph?AgentIdentity={A1}&optionsOverride.RequestAppToken=true"
    async with broker_factory(DownstreamApis__graph__AllowedScopes__0=f"{GRAPH}/.default") as broker:
        status, body, headers = await get(
            http, broker, path + f"&optionsOverride.Scopes={demo.DEMO_API_RESOURCE}/.default", token=user
        )
        assert_problem_parts(status, headers["Content-Type"], body, 403)
        assert body["type"].endswith("scope-not-allowed")
        status, body, _ = await get(http, broker, path + f"&optionsOverride.Scopes={GRAPH}/.default", token=user)
        assert status == 200, body
    # Without an allow-list, Microsoft-compatible: any override scope.
    async with broker_factory() as broker:
        status, body, _ = await get(
            http, broker, path + f"&optionsOverride.Scopes={demo.DEMO_API_RESOURCE}/.default", token=user
        )
        assert status == 200, body
    # Strict mode: only the API's configured scopes.
    async with broker_factory(Broker__Strict="true") as broker:
        status, body, headers = await get(
            http, broker, path + f"&optionsOverride.Scopes={demo.DEMO_API_RESOURCE}/.default",
            token=user, headers=STRICT_HEADER,
        )
        assert_problem_parts(status, headers["Content-Type"], body, 403)


async def test_agent_and_agent_user_allow_lists(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory(
        Broker__AllowedAgentIdentities__0=A1, Broker__AllowedAgentUsers__0="someone@example.com"
    ) as broker:
        status, body, _ = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}")
        assert status == 200, body
        status, body, headers = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A2}")
        assert_problem_parts(status, headers["Content-Type"], body, 403)
        assert body["type"].endswith("agent-not-allowed")
        status, body, headers = await get(
            http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}"
        )
        assert_problem_parts(status, headers["Content-Type"], body, 403)
        assert body["type"].endswith("agent-user-not-allowed")
    async with broker_factory(Broker__AllowedAgentUsers__0=demo.AGENT_USER_UPN.upper()) as broker:
        status, body, _ = await get(
            http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}"
        )
        assert status == 200, body


async def test_required_scopes_apply_to_the_token_routes(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    path = f"/AuthorizationHeader/graph?AgentIdentity={A1}"
    weak = admin.user_token(demo.DEMO_USER_UPN, scp="Other.Read")
    strong = admin.user_token(demo.DEMO_USER_UPN)
    async with broker_factory(Broker__RequiredScopes__0=demo.BLUEPRINT_SCOPE) as broker:
        status, body, headers = await get(http, broker, path, token=weak)
        assert_problem_parts(status, headers["Content-Type"], body, 403)
        assert body["type"].endswith("insufficient-scope")
        status, body, _ = await get(http, broker, path, token=strong)
        assert status == 200, body
    async with broker_factory(Broker__Strict="true", AzureAd__Scopes=demo.BLUEPRINT_SCOPE) as broker:
        status, body, headers = await get(http, broker, path, token=weak, headers=STRICT_HEADER)
        assert_problem_parts(status, headers["Content-Type"], body, 403)
        status, body, _ = await get(http, broker, path, token=strong, headers=STRICT_HEADER)
        assert status == 200, body


async def test_cache_miss_flood_gets_429_but_hits_are_served(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory(
        Broker__Limits__CacheMissBurst="2", Broker__Limits__CacheMissesPerSecond="0.01"
    ) as broker:
        for agent, api in ((A1, "graph"), (A1, "demo")):
            status, body, _ = await get(http, broker, f"{UNAUTH}/{api}?AgentIdentity={agent}")
            assert status == 200, body
        status, body, headers = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A2}")
        assert_problem_parts(status, headers["Content-Type"], body, 429)
        assert int(headers["Retry-After"]) >= 1
        assert body["type"].endswith("too-many-cache-misses")
        status, body, _ = await get(http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}")
        assert status == 200, body  # a cache hit costs nothing


async def test_per_caller_concurrency_and_request_timeout(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    admin.fault(target="token", mode="latency", latency_ms=1500)
    async with broker_factory(
        Broker__Limits__MaxConcurrentRequestsPerCaller="1", Broker__Limits__RequestTimeoutSeconds="0.5"
    ) as broker:
        path = f"{UNAUTH}/graph?AgentIdentity={A1}"
        slow_request = asyncio.ensure_future(get(http, broker, path))
        # The slow request holds the caller's one slot once its upstream call is in flight.
        await wait_for_metric(http, broker, "upstream_in_flight", lambda n: n >= 1)
        busy = await get(http, broker, "/Validate")
        slow = await slow_request
        assert_problem_parts(busy[0], busy[2]["Content-Type"], busy[1], 429)
        assert_problem_parts(slow[0], slow[2]["Content-Type"], slow[1], 503)
        assert slow[1]["type"].endswith("request-timeout")
    admin.clear_faults()
