"""Bounds of the structures that grow with identities or callers, driven past them over the real
components (MSAL apps over the emulator, the token gate of a running broker); docs/performance.md
lists every bound and the test that holds it."""

from __future__ import annotations

import asyncio
import ssl
import time

from agent_token_broker.api.gate import MEMO_MAX_BYTES, TARGET_BYTES_PER_ENTRY
from agent_token_broker.api.params import Family, parse_query_string
from agent_token_broker.api.policy import Route
from agent_token_broker.cache.token import CachedToken
from agent_token_broker.entra.apps import AppRegistry
from agent_token_broker.msal_http import UpstreamHttp
from entra_emulator import demo
from entra_emulator.runner import EmulatorServer
from tests.integration.conftest import BrokerFactory

GUID = "{:08x}-0000-4000-8000-{:012x}"


def _registry(emulator: EmulatorServer, bound: int) -> AppRegistry:
    http = UpstreamHttp(ssl_context=ssl.create_default_context(cafile=str(emulator.ca_path)))
    return AppRegistry(instance=emulator.url, http=http, max_agent_apps=bound)


def _case_variants(text: str, n: int) -> list[str]:
    """``n`` spellings of a GUID that differ only in the case of its letters (one tenant to Entra)."""
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    out = []
    for mask in range(n):
        chars = list(text)
        for bit, index in enumerate(letters):
            if mask >> bit & 1:
                chars[index] = chars[index].upper()
        out.append("".join(chars))
    return out


def test_msal_agent_apps_are_an_lru_of_max_agent_clients(emulator: EmulatorServer) -> None:
    registry = _registry(emulator, bound=4)
    apps = [registry.agent_app(GUID.format(i, i), demo.TENANT_ID) for i in range(10)]
    assert len(registry._agents) == 4
    rebuilt = registry.agent_app(GUID.format(0, 0), demo.TENANT_ID)  # evicted: built again, offline
    assert rebuilt is not apps[0] and rebuilt.client_id == GUID.format(0, 0)
    assert registry.agent_app(GUID.format(9, 9), demo.TENANT_ID) is apps[9]  # still held


def test_msal_blueprint_apps_per_tenant_are_bounded_too(emulator: EmulatorServer) -> None:
    """A caller allowed to name the tenant (the Tenant override) must not grow the blueprint's apps."""
    registry = _registry(emulator, bound=4)
    for tenant in _case_variants(demo.TENANT_ID, 10):
        app = registry.blueprint_app(demo.BLUEPRINT_APP_ID, tenant, 1, lambda: demo.BLUEPRINT_SECRET)
        assert app.client_id == demo.BLUEPRINT_APP_ID
    assert len(registry._blueprints) == 4


async def test_the_gate_decision_memo_stays_within_its_bytes(broker_factory: BrokerFactory) -> None:
    """Distinct unauthenticated requests that are all cache hits: each decision is remembered, and
    the memo never holds more than ``MEMO_MAX_BYTES`` (estimated) however many there are."""
    async with broker_factory() as broker:
        assert broker.api is not None
        gate = broker.api.gate
        cache = broker.runtime.cache
        now = time.time()
        n = MEMO_MAX_BYTES // 600  # more decisions than fit (each is estimated at ~680 bytes)
        for i in range(n):
            query = parse_query_string(f"AgentIdentity={GUID.format(i, i)}", Family.HEADER)
            key = gate.decision(Route.HEADER_UNAUTH, "graph", query).key
            cache.put(key, CachedToken(f"token-{i}", now + 3600, now), _not_called)
            token = await gate.token(Route.HEADER_UNAUTH, "graph", query)
            assert token.value == f"token-{i}"
            assert 0 < gate.memo_bytes <= MEMO_MAX_BYTES
        assert len(gate._memo) < n  # it started afresh at least once


async def _not_called() -> CachedToken:
    raise AssertionError("a seeded key is not acquired")


async def test_connection_guard_tables_hold_open_connections_only(broker_factory: BrokerFactory) -> None:
    """The per-connection and per-peer tables of both listeners empty again when connections close."""
    async with broker_factory() as broker:
        targets = [(broker.api_urls[0], "/healthz"), (broker.ops_url, "/healthz")]
        for base, path in targets:
            assert base is not None
            host, port = base.removeprefix("http://").rsplit(":", 1)
            conns = [await asyncio.open_connection(host, int(port)) for _ in range(40)]
            for _reader, writer in conns:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            for reader, _ in conns:
                assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 ")
            assert sum(g.open for g in broker.guards.values()) >= min(40, 8)  # ops caps 8 per peer
            for _, writer in conns:
                writer.close()
        async with asyncio.timeout(10):
            while any(g.open or g._per_peer or g._by_transport for g in broker.guards.values()):
                await asyncio.sleep(0.02)


async def test_remembered_targets_are_bounded_by_the_cache_size(broker_factory: BrokerFactory) -> None:
    """The gate remembers at most one raw query string per cache entry (Broker__Cache__MaxEntries),
    and at most that many times TARGET_BYTES_PER_ENTRY bytes of them; then it starts afresh."""
    async with broker_factory(Broker__Cache__MaxEntries="200") as broker:
        assert broker.api is not None
        gate = broker.api.gate
        most = 0
        for i in range(1_000):
            raw = f"AgentIdentity={GUID.format(i, i)}"
            decision = gate.decision(Route.HEADER_UNAUTH, "graph", parse_query_string(raw, Family.HEADER))
            gate.remember_target(Route.HEADER_UNAUTH, "graph", raw, decision)
            count, size = gate.targets
            assert count <= 200 and size <= 200 * TARGET_BYTES_PER_ENTRY
            most = max(most, count)
        assert most == 200
        long_raw = "AgentIdentity=" + GUID.format(0, 0) + "&" + "x" * 600  # too long to remember
        gate.remember_target(Route.HEADER_UNAUTH, "graph", long_raw, decision)
        assert gate.target(Route.HEADER_UNAUTH, "graph", long_raw) is None
