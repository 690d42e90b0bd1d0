"""``/readyz`` reflects reality, against the emulator: startup, outages with and without cached tokens, recovery.

``/healthz`` is liveness only: it stays 200 throughout.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp

from agent_token_broker.server import RunningBroker, running
from agent_token_broker.settings import load_settings
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory, base_env
from tests.integration.helpers import get

CRED = "AzureAd__ClientCredentials__0__"
APP_PATH = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_1_ID}"
OTHER_PATH = f"/AuthorizationHeaderUnauthenticated/demo?AgentIdentity={demo.AGENT_2_ID}"
FLIP_TIMEOUT = 20.0  # warm-up and the degraded-state probe back off up to a few seconds


async def readyz(http: aiohttp.ClientSession, broker: RunningBroker) -> tuple[int, dict[str, Any]]:
    assert broker.ops_url is not None
    async with http.get(broker.ops_url + "/readyz") as resp:
        return resp.status, await resp.json()


async def healthz(http: aiohttp.ClientSession, broker: RunningBroker) -> int:
    assert broker.ops_url is not None
    async with http.get(broker.ops_url + "/healthz") as resp:
        return resp.status


async def wait_readyz(
    http: aiohttp.ClientSession, broker: RunningBroker, status: int, timeout: float = FLIP_TIMEOUT
) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``status`` (bounded)."""
    last: tuple[int, dict[str, Any]] = (0, {})
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await readyz(http, broker)
                if last[0] == status:
                    return last[1]
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"/readyz never answered {status}; last: {last}") from None


async def get_ok(http: aiohttp.ClientSession, broker: RunningBroker, path: str) -> None:
    """After recovery a key's remembered failure (negative cache) expires within seconds: retry, bounded."""
    async with asyncio.timeout(FLIP_TIMEOUT):
        while True:
            status, body, _ = await get(http, broker, path)
            if status == 200:
                return
            assert status == 503, body
            await asyncio.sleep(0.2)


async def test_not_ready_until_the_credential_produces_an_assertion(
    emulator: EmulatorServer, admin: EmulatorAdmin, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token_file = tmp_path / "azure-identity-token"  # not there yet: the kubelet has not projected it
    env = base_env(emulator)
    for key in [k for k in env if k.startswith(CRED)]:
        del env[key]
    env[CRED + "SourceType"] = "SignedAssertionFilePath"
    env[CRED + "SignedAssertionFileDiskPath"] = str(token_file)
    async with running(load_settings(env=env)) as broker:
        status, body = await readyz(http, broker)
        assert status == 503 and body["ready"] is False, body
        await asyncio.sleep(0.5)
        status, body = await readyz(http, broker)
        assert status == 503, body
        assert "credential" in body["detail"], body
        assert await healthz(http, broker) == 200  # liveness is not readiness

        fresh = tmp_path / "new-token"
        fresh.write_text(admin.workload_token())
        os.replace(fresh, token_file)
        body = await wait_readyz(http, broker, 200)
        assert body == {"ready": True, "detail": "ready", "cachedTokens": 0}
        status, token_body, _ = await get(http, broker, APP_PATH)
        assert status == 200, token_body


async def test_not_ready_until_the_authority_answers(
    emulator: EmulatorServer, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    admin.fault(target="all", mode="outage")
    async with running(load_settings(env=base_env(emulator))) as broker:
        await asyncio.sleep(0.5)
        status, body = await readyz(http, broker)
        assert status == 503, body
        assert "authority" in body["detail"], body
        admin.clear_faults()
        body = await wait_readyz(http, broker, 200)
        assert body["detail"] == "ready"


async def test_outage_with_cached_tokens_is_degraded_but_ready_and_recovers(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    async with broker_factory() as broker:
        assert (await readyz(http, broker))[0] == 200
        status, first, _ = await get(http, broker, APP_PATH)
        assert status == 200, first

        admin.fault(target="all", mode="outage")
        # A token the broker does not hold cannot be fetched: the broker learns of the outage...
        status, body, _ = await get(http, broker, OTHER_PATH)
        assert status == 503, body
        # ...but it still serves the one it holds, so it stays ready, degraded.
        status, body = await readyz(http, broker)
        assert status == 200, body
        assert body["ready"] is True and body["detail"].startswith("degraded"), body
        assert "authority unreachable" in body["detail"]
        assert body["servableTokens"] >= 1
        status, again, _ = await get(http, broker, APP_PATH)
        assert status == 200 and again == first
        assert await healthz(http, broker) == 200

        admin.clear_faults()
        body = await wait_readyz(http, broker, 200)
        async with asyncio.timeout(FLIP_TIMEOUT):
            while body["detail"] != "ready":  # the monitor's probe finds the authority again
                await asyncio.sleep(0.1)
                body = (await readyz(http, broker))[1]
        await get_ok(http, broker, OTHER_PATH)


async def test_outage_without_cached_tokens_is_not_ready_until_recovery(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    async with broker_factory() as broker:
        assert (await readyz(http, broker))[0] == 200
        admin.fault(target="all", mode="outage")
        status, body, _ = await get(http, broker, APP_PATH)
        assert status == 503, body
        status, body = await readyz(http, broker)
        assert status == 503, body
        assert body["ready"] is False
        assert body["detail"] == "authority unreachable and no valid cached token", body
        assert await healthz(http, broker) == 200

        admin.clear_faults()  # recovery is found by the monitor's probe, with no traffic at all
        body = await wait_readyz(http, broker, 200)
        assert body["detail"] == "ready", body
        await get_ok(http, broker, APP_PATH)
