"""Redis stopped mid-run, then restarted: no failed request, degraded state visible, automatic recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorServer
from tests.e2e.redis_helpers import RedisServer, new_key, redis_env, redis_server, replica, write_key_file
from tests.integration.helpers import get

__all__ = ["redis_server"]

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
GRAPH = "/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={agent}"
DEMO = "/AuthorizationHeaderUnauthenticated/demo?AgentIdentity={agent}"
USER = "/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={agent}&AgentUserId=" + demo.AGENT_USER_OID


async def readyz(http: aiohttp.ClientSession, broker: RunningBroker) -> tuple[int, dict[str, Any]]:
    assert broker.ops_url is not None
    async with http.get(broker.ops_url + "/readyz") as resp:
        return resp.status, await resp.json()


async def wait_for_detail(
    http: aiohttp.ClientSession, broker: RunningBroker, degraded: bool, timeout: float = 15.0
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            status, body = await readyz(http, broker)
            assert status == 200, body  # a Redis outage never makes the broker unready
            if ("shared cache degraded" in body["detail"]) == degraded:
                return body
            await asyncio.sleep(0.05)


async def test_redis_outage_fails_no_request_shows_degraded_and_recovers(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = redis_env(
        emulator,
        redis_server,
        [write_key_file(tmp_path / "k", new_key())],
        Broker__Cache__Redis__CircuitOpenSeconds="0.3",
        Broker__Cache__Redis__FailureThreshold="2",
    )
    statuses: list[int] = []

    async def fetch(http: aiohttp.ClientSession, broker: RunningBroker, template: str, agent: str) -> str:
        status, body, _ = await get(http, broker, template.format(agent=agent))
        statuses.append(status)
        return str(body.get("authorizationHeader"))

    async with aiohttp.ClientSession() as http, replica(env) as broker:
        shared = broker.runtime.shared_cache
        assert shared is not None
        await fetch(http, broker, GRAPH, A1)
        await wait_for_detail(http, broker, degraded=False)

        redis_server.stop()
        # New keys (L1 misses: Redis would be asked) and cached keys, concurrently, while Redis is down.
        await asyncio.gather(
            *(
                fetch(http, broker, t, a)
                for t, a in [(GRAPH, A1), (GRAPH, A2), (DEMO, A1), (USER, A1)]
                for _ in range(3)
            )
        )
        body = await wait_for_detail(http, broker, degraded=True)
        assert "circuit" in body["detail"]
        assert shared.observer.counts["breaker:open"] >= 1
        errors_while_open = sum(v for k, v in shared.observer.counts.items() if k.startswith("error:"))
        await asyncio.gather(*(fetch(http, broker, DEMO, a) for a in (A1, A2) for _ in range(5)))
        assert (
            sum(v for k, v in shared.observer.counts.items() if k.startswith("error:"))
            <= errors_while_open + 1
        )

        redis_server.start()
        await wait_for_detail(http, broker, degraded=False)  # recovered without any request
        assert shared.observer.counts["breaker:closed"] >= 1
        broker.runtime.cache.clear()
        before = admin.counts()
        await fetch(http, broker, GRAPH, A2)  # L1 miss: goes through Redis again (written there)
        assert admin.counts().get("app", 0) == before.get("app", 0) + 1

    assert len(statuses) == 24 and all(s == 200 for s in statuses), statuses
    async with aiohttp.ClientSession() as http, replica(env) as other:
        before = admin.counts()
        await fetch(http, other, GRAPH, A2)  # written after recovery: a Redis hit for a new broker
        assert admin.counts() == before
    assert all(s == 200 for s in statuses), statuses
