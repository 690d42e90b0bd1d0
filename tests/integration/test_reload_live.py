"""Reload in a running broker (in this event loop): what a reload changes takes effect at the next
request, even for a request whose decision was remembered before; the token cache is kept.

The real-signal test (a ``serve`` process, SIGHUP, the config-file watch) is test_reload_process.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import aiohttp

from agent_token_broker.reload import APPLIED, RESTART_REQUIRED, UNCHANGED
from agent_token_broker.server import RunningBroker
from agent_token_broker.settings import CaseInsensitiveMapping
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory, make_settings
from tests.integration.helpers import get, wait_for_metric

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
UNAUTH = "/AuthorizationHeaderUnauthenticated"
BOTH = {"Broker__AllowedAgentIdentities__0": A1, "Broker__AllowedAgentIdentities__1": A2}


async def _token(http: aiohttp.ClientSession, broker: RunningBroker, path: str) -> str:
    status, body, _ = await get(http, broker, path)
    assert status == 200, body
    return str(body["authorizationHeader"])


async def test_a_narrowed_allow_list_refuses_a_remembered_request_and_keeps_the_cache(
    broker_factory: BrokerFactory, emulator: EmulatorServer, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory(**BOTH) as broker:
        runtime = broker.runtime
        one, two = f"{UNAUTH}/graph?AgentIdentity={A1}", f"{UNAUTH}/graph?AgentIdentity={A2}"
        first = await _token(http, broker, one)
        await _token(http, broker, two)
        assert await _token(http, broker, two)  # a cache hit through the remembered decision
        assert broker.api is not None
        gate = broker.api.gate
        assert gate.memo_bytes > 0  # both decisions remembered
        seq = admin.last_seq()

        report = runtime.apply_settings(make_settings(emulator, Broker__AllowedAgentIdentities__0=A1))

        assert report.result == APPLIED and report.applied == ("Broker__AllowedAgentIdentities",)
        assert report.restart == ()
        assert gate.memo_bytes == 0  # decisions made under the old allow-list are gone
        status, body, _ = await get(http, broker, two)
        assert status == 403 and body["type"].endswith("agent-not-allowed"), body
        assert await _token(http, broker, one) == first  # the same cached token
        assert admin.token_requests(seq) == []  # and no upstream call for it
        assert runtime.apply_settings(make_settings(emulator, Broker__AllowedAgentIdentities__0=A1)).result == UNCHANGED


async def test_a_decision_in_flight_across_a_reload_is_not_remembered_under_the_new_settings(
    broker_factory: BrokerFactory, emulator: EmulatorServer, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    """A miss decided under the old allow-list, still acquiring when a reload narrows it, gets its
    token (it was allowed when decided), but its decision is not remembered for the new settings:
    the next request for that agent is decided again, refused, and no hit serves it (neither the
    front's remembered target nor the gate's memo)."""
    async with broker_factory(**BOTH) as broker:
        two = f"{UNAUTH}/graph?AgentIdentity={A2}"
        assert broker.api is not None
        gate = broker.api.gate
        admin.fault(target="token", mode="latency", latency_ms=1500)
        try:
            in_flight = asyncio.ensure_future(get(http, broker, two))
            await wait_for_metric(http, broker, "upstream_in_flight", lambda n: n >= 1)
            report = broker.runtime.apply_settings(make_settings(emulator, Broker__AllowedAgentIdentities__0=A1))
            assert report.applied == ("Broker__AllowedAgentIdentities",)
            status, body, _ = await in_flight
            assert status == 200, body  # decided under the old allow-list
        finally:
            admin.clear_faults()
        for _ in range(2):  # on a new connection and on a kept-alive one
            status, body, _ = await get(http, broker, two)
            assert status == 403 and body["type"].endswith("agent-not-allowed"), body
            assert "authorizationHeader" not in body
        assert gate.memo_bytes == 0 and gate.targets == (0, 0)  # nothing remembered under the new settings


async def test_a_caller_table_reloaded_while_a_bearer_token_is_validated_applies_to_that_request(
    broker_factory: BrokerFactory, emulator: EmulatorServer, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    """A reload that turns on Broker__Callers while an authenticated request awaits its bearer
    token's validation (here: the signing keys of a rotated key, fetched slowly) is the policy that
    request is decided under: refused, not given a token under the table it started with."""
    async with broker_factory() as broker:
        assert broker.api is not None
        admin.rotate_keys()
        user_token = admin.user_token(demo.DEMO_USER_UPN)  # signed with a key the broker has not fetched
        admin.fault(target="discovery", mode="latency", latency_ms=1500)
        try:
            request = asyncio.ensure_future(
                get(http, broker, f"/AuthorizationHeader/graph?AgentIdentity={A1}", token=user_token)
            )
            async with asyncio.timeout(10):
                while broker.api.in_flight.callers == 0:  # in the handler: awaiting the keys
                    await asyncio.sleep(0.01)
            report = broker.runtime.apply_settings(make_settings(
                emulator, Broker__Callers__other__Uid="10030", Broker__Callers__RequireMatch="true"
            ))  # fmt: skip
            assert "Broker__Callers__RequireMatch" in " ".join(report.applied), report
            status, body, _ = await request
        finally:
            admin.clear_faults()
        assert status == 403 and body["type"].endswith("caller-not-allowed"), body
        assert "authorizationHeader" not in body


async def test_changed_scopes_of_an_api_apply_to_remembered_requests(
    broker_factory: BrokerFactory, emulator: EmulatorServer, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory() as broker:
        path = f"{UNAUTH}/graph?AgentIdentity={A1}"
        graph = await _token(http, broker, path)
        new = make_settings(emulator, DownstreamApis__graph__Scopes__0=f"{demo.DEMO_API_RESOURCE}/.default")
        assert broker.runtime.apply_settings(new).applied == ("DownstreamApis__graph__Scopes",)
        demo_api = await _token(http, broker, path)
        assert demo_api != graph
        back = make_settings(emulator)
        assert broker.runtime.apply_settings(back).result == APPLIED
        seq = admin.last_seq()
        assert await _token(http, broker, path) == graph  # the graph token was kept in the cache
        assert admin.token_requests(seq) == []


async def test_guards_limits_and_override_flags_follow_a_reload(
    broker_factory: BrokerFactory, emulator: EmulatorServer, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory() as broker:
        runtime = broker.runtime
        path = f"{UNAUTH}/graph?AgentIdentity={A1}"
        scoped = f"{UNAUTH}/graph?AgentIdentity={A2}&optionsOverride.RequestAppToken=true&optionsOverride.Scopes="
        await _token(http, broker, path)
        status, body, _ = await get(http, broker, scoped + f"{demo.DEMO_API_RESOURCE}/.default")
        assert status == 400 and body["type"].endswith("override-not-allowed"), body
        report = runtime.apply_settings(
            make_settings(
                emulator,
                Broker__RequireHeader__Enabled="true",
                Broker__Limits__MaxQueryBytes="256",
                Broker__Limits__CacheMissesPerSecondPerAgent="0.01",
                Broker__Limits__CacheMissBurstPerAgent="1",
                Broker__Limits__MaxConcurrentRequests="7",
                Broker__Limits__RequestTimeoutSeconds="12",
                Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated="true",
            )
        )
        assert report.result == APPLIED and len(report.applied) == 7, report
        status, body, _ = await get(http, broker, path)
        assert status == 400 and body["type"].endswith("missing-required-header"), body
        header = {"X-Token-Broker-Request": "true"}
        status, body, _ = await get(http, broker, path + "&x=" + "a" * 300, headers=header)
        assert status == 414, body
        state = broker.api
        assert state is not None
        assert state.deadlines.limit == 12.0 and state.in_flight._max_total == 7
        # The override is allowed now; the per-agent miss bucket holds one: a second cold key is 429
        # (refused before any upstream call).
        status, body, _ = await get(http, broker, scoped + f"{demo.DEMO_API_RESOURCE}/.default", headers=header)
        assert status == 200, body
        status, body, _ = await get(http, broker, scoped + "api://another-resource/.default", headers=header)
        assert status == 429 and body["type"].endswith("too-many-cache-misses"), body


async def test_keys_that_need_a_restart_are_reported_and_keep_their_running_values(
    broker_factory: BrokerFactory, emulator: EmulatorServer, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    async with broker_factory() as broker:
        runtime = broker.runtime
        before = runtime.settings
        report = runtime.apply_settings(
            make_settings(emulator, Broker__Listen="127.0.0.1:1", Broker__Upstream__ReadTimeoutSeconds="3")
        )
        assert report.result == RESTART_REQUIRED
        assert report.restart == ("Broker__Listen", "Broker__Upstream__ReadTimeoutSeconds")
        assert runtime.settings is before and runtime.restart_pending == report.restart
        assert "needs a restart" in report.message() and "Broker__Listen" in report.message()
        report = runtime.apply_settings(make_settings(emulator, Broker__Listen="127.0.0.1:1", Broker__Strict="true"))
        assert report.applied == ("Broker__Strict", "Broker__RequireHeader__Enabled")  # its default follows
        assert report.restart == ("Broker__Listen",)
        assert runtime.settings.strict and runtime.settings.listen == before.listen
        assert runtime.apply_settings(make_settings(emulator)).restart == ()  # back as it runs
        assert runtime.restart_pending == ()
        await _token(http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}")


async def test_the_log_level_follows_a_reload(broker_factory: BrokerFactory, emulator: EmulatorServer) -> None:
    root = logging.getLogger()
    saved = root.level
    try:
        async with broker_factory() as broker:
            broker.runtime.apply_settings(make_settings(emulator, Logging__LogLevel__Default="Error"))
            assert root.level == logging.ERROR
            broker.runtime.apply_settings(make_settings(emulator, Logging__LogLevel__Default="Debug"))
            assert root.level == logging.DEBUG
    finally:
        root.setLevel(saved)


async def test_a_remembered_no_op_override_is_decided_again_under_the_new_scopes(
    broker_factory: BrokerFactory, emulator: EmulatorServer, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    """The gate remembers a canonical decision: an override equal to the API's scopes is a no-op,
    allowed without ``Sidecar__AllowOverrides``. Once a reload changes the API's scopes, the same
    request changes the scopes, so it is an override the route does not allow."""
    async with broker_factory() as broker:
        noop = f"{UNAUTH}/graph?AgentIdentity={A1}&optionsOverride.Scopes={demo.GRAPH_RESOURCE}/.default"
        plain = f"{UNAUTH}/graph?AgentIdentity={A1}"
        token = await _token(http, broker, noop)
        assert await _token(http, broker, plain) == token  # one canonical request, one cache key
        new = make_settings(emulator, DownstreamApis__graph__Scopes__0=f"{demo.DEMO_API_RESOURCE}/.default")
        broker.runtime.apply_settings(new)
        status, body, _ = await get(http, broker, noop)
        assert status == 400 and body["type"].endswith("override-not-allowed"), body
        assert await _token(http, broker, plain) != token  # the API's new scope


async def test_msi_resource_allow_lists_follow_a_reload_and_keep_the_cache(
    broker_factory: BrokerFactory, emulator: EmulatorServer, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    """``/msi/token`` issues tokens for the configured APIs' resources (or AllowedResources): a
    reload that drops the demo API refuses its resource at once, also for a remembered request,
    while the graph token is served from the cache."""
    secret = "test-identity-header-0123456789"
    keys = {"Broker__ManagedIdentityEndpoint__Secret": secret, "Broker__ManagedIdentityEndpoint__DefaultAgentIdentity": A2}
    headers = {"X-IDENTITY-HEADER": secret}

    async def msi(resource: str) -> tuple[int, dict[str, object]]:
        status, body, _ = await get(http, broker, f"/msi/token?api-version=2019-08-01&resource={resource}", headers=headers)
        return status, body

    async with broker_factory(**keys) as broker:
        status, graph = await msi(demo.GRAPH_RESOURCE)
        assert status == 200, graph
        status, body = await msi(demo.DEMO_API_RESOURCE)
        assert status == 200, body
        seq = admin.last_seq()
        env = make_settings(emulator, **keys)
        dropped = dict(env.downstream_apis)
        dropped.pop("demo")
        report = broker.runtime.apply_settings(replace(env, downstream_apis=CaseInsensitiveMapping(dropped)))
        assert report.applied == ("DownstreamApis__demo",)
        status, body = await msi(demo.DEMO_API_RESOURCE)
        assert status == 403 and "AllowedResources" in str(body), body
        status, again = await msi(demo.GRAPH_RESOURCE)
        assert status == 200 and again["access_token"] == graph["access_token"]
        # AllowedResources, live too: only the demo API's resource now.
        report = broker.runtime.apply_settings(
            make_settings(emulator, **keys, Broker__ManagedIdentityEndpoint__AllowedResources__0=demo.DEMO_API_RESOURCE)
        )
        assert report.applied == ("DownstreamApis__demo", "Broker__ManagedIdentityEndpoint__AllowedResources")
        status, body = await msi(demo.GRAPH_RESOURCE)
        assert status == 403, body
        status, body = await msi(demo.DEMO_API_RESOURCE)
        assert status == 200, body
        assert admin.token_requests(seq) == []  # the demo API's token was still cached
