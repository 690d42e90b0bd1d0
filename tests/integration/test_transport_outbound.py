"""Issue 15 items 5-7: separate pools, signing keys unavailable -> 503, one trust store.

Everything over real HTTPS: the emulator (MSAL in the loop), a slow downstream API, and
for the trust test a second and third emulator whose CAs differ from the session's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory, base_env
from tests.integration.helpers import get

A1 = demo.AGENT_1_ID
CLI = [sys.executable, "-m", "agent_token_broker.cli"]


async def _validate(http: aiohttp.ClientSession, broker: RunningBroker, token: str) -> tuple[int, str | None]:
    async with http.get(
        broker.api_urls[0] + "/Validate",
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as resp:
        await resp.read()
        return resp.status, resp.headers.get("Retry-After")


def _jwks_fetches(admin: EmulatorAdmin, since: int) -> int:
    return sum(1 for r in admin.log(since)["requests"] if r["endpoint"] == "jwks")


# -- item 6: signing keys unavailable ---------------------------------------------------------------


async def test_unreachable_signing_keys_are_503_and_recovery_refetches_once(
    broker: RunningBroker, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    assert (await _validate(http, broker, admin.user_token(demo.DEMO_USER_UPN)))[0] == 200
    admin.rotate_keys()
    rotated = admin.user_token(demo.DEMO_USER_UPN)  # signed with a key the broker has not seen
    admin.fault(target="discovery", mode="status", status=503)
    status, retry_after = await _validate(http, broker, rotated)
    assert status == 503 and retry_after is not None, status  # not 401 "unknown signing key"
    admin.clear_faults()
    since = admin.log()["last_seq"]
    # The authority is back: requests are 503 until the failure backoff (Retry-After) ends,
    # then the next ones refetch once (single flight) and are served. Never a 401.
    deadline = time.monotonic() + 20
    statuses: list[int] = []
    while time.monotonic() < deadline:
        burst = await asyncio.gather(*(_validate(http, broker, rotated) for _ in range(10)))
        statuses += [s for s, _ in burst]
        if all(s == 200 for s, _ in burst):
            break
        await asyncio.sleep(0.25)
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
    assert _jwks_fetches(admin, since) == 1


# -- item 5: separate pools -------------------------------------------------------------------------


@pytest.fixture
async def slow_api(emulator: EmulatorServer) -> AsyncIterator[tuple[str, asyncio.Event, list[int]]]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    state_dir = emulator.ca_path.parent
    tls.load_cert_chain(str(state_dir / "server-cert.pem"), str(state_dir / "server-key.pem"))
    release = asyncio.Event()
    holding: list[int] = []

    async def slow(request: web.Request) -> web.Response:
        holding.append(1)
        try:
            async with asyncio.timeout(30):
                await release.wait()
        finally:
            holding.pop()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", release, holding
    finally:
        release.set()
        await runner.cleanup()


async def test_slow_downstream_calls_do_not_starve_signing_key_refetch(
    broker_factory: BrokerFactory,
    admin: EmulatorAdmin,
    http: aiohttp.ClientSession,
    slow_api: tuple[str, asyncio.Event, list[int]],
) -> None:
    url, release, holding = slow_api
    settings = {
        "DownstreamApis__slow__BaseUrl": url,
        "DownstreamApis__slow__RelativePath": "slow",
        "DownstreamApis__slow__Scopes__0": f"{demo.GRAPH_RESOURCE}/.default",
    }
    async with broker_factory(**settings) as broker:
        assert (await _validate(http, broker, admin.user_token(demo.DEMO_USER_UPN)))[0] == 200

        async def downstream() -> int:
            async with http.post(
                broker.api_urls[0] + f"/DownstreamApiUnauthenticated/slow?AgentIdentity={A1}",
                timeout=aiohttp.ClientTimeout(total=40),
            ) as resp:
                await resp.read()
                return resp.status

        calls = [asyncio.create_task(downstream()) for _ in range(20)]
        try:
            async with asyncio.timeout(20):
                while len(holding) < 20:  # every call holds a downstream connection now
                    await asyncio.sleep(0.05)
            admin.rotate_keys()
            status, _ = await _validate(http, broker, admin.user_token(demo.DEMO_USER_UPN))
            assert status == 200  # the JWKS refetch had a connection of its own
        finally:
            release.set()
            results = await asyncio.gather(*calls)
        assert results == [200] * 20


# -- item 7: one trust store, re-read on change ----------------------------------------------------


def _start_emulator(state: Path, port: int = 0) -> EmulatorServer:
    deadline = time.monotonic() + 10
    while True:
        try:
            return EmulatorServer(state, port=port).start()
        except RuntimeError:
            if time.monotonic() > deadline:  # the old listener's port is not free yet
                raise
            time.sleep(0.2)


async def test_changed_authority_ca_is_trusted_by_every_client_without_restart(
    broker_factory: BrokerFactory,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = _start_emulator(tmp_path / "first")
    bundle = tmp_path / "bundle.pem"
    shutil.copy(first.ca_path, bundle)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    second: EmulatorServer | None = None
    try:
        env = base_env(first)
        async with broker_factory(env=env) as broker:
            path = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
            status, body, _ = await get(http, broker, path)
            assert status == 200, body
            # The authority moves to a certificate from another CA (same address); the bundle follows.
            port = first.port
            first.stop()
            second = await asyncio.to_thread(_start_emulator, tmp_path / "second", port)
            assert second.ca_path.read_bytes() != bundle.read_bytes()
            tmp = tmp_path / "bundle.tmp"
            shutil.copy(second.ca_path, tmp)
            os.replace(tmp, bundle)
            admin = EmulatorAdmin(second.url, second.ca_path)
            fresh_path = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_2_ID}"
            user = admin.user_token(demo.DEMO_USER_UPN)  # signed with the new emulator's key
            assert broker.ops_url is not None
            deadline = time.monotonic() + 30
            last: tuple[object, ...] = ()
            while time.monotonic() < deadline:
                validate, _ = await _validate(http, broker, user)  # JWKS over aiohttp
                # A fresh acquisition (MSAL over requests): an agent the broker has no token for.
                token, body, _ = await get(http, broker, fresh_path)
                async with http.get(broker.ops_url + "/readyz") as resp:
                    ready = (resp.status, (await resp.json())["detail"])
                last = (validate, token, ready)
                if validate == 200 and token == 200 and ready[0] == 200 and ready[1] == "ready":
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"not every client trusts the new CA: {last}")
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_missing_ca_bundle_is_a_config_error_naming_the_variable(emulator: EmulatorServer, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    for variable in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
        env.update(base_env(emulator))
        env[variable] = str(missing)
        for command in ("serve", "check-config"):
            out = subprocess.run([*CLI, command], env=env, capture_output=True, text=True, timeout=60)
            assert out.returncode == 2, (command, out.stderr)
            assert f"config error: {variable}: the CA bundle {missing} does not exist" in out.stderr
            assert "cannot listen" not in out.stderr and "Traceback" not in out.stderr
