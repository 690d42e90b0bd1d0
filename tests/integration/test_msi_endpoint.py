"""``GET /msi/token``: real managed-identity clients (azure-identity, MSAL Python) get agent tokens.

The clients are synchronous, so they run in a worker thread while the broker serves
in this event loop. ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` are what an agent
container would have set.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ManagedIdentityCredential

from agent_token_broker.server import RunningBroker
from agent_token_broker.settings import ConfigError, effective_config, load_settings
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory, base_env
from tests.integration.helpers import claims_of

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
SECRET = "test-identity-header-0123456789"
GRAPH_AUDS = (demo.GRAPH_RESOURCE, demo.GRAPH_APP_ID)
WAIT = 30.0
T = TypeVar("T")
MI_KEYS = {
    "Broker__ManagedIdentityEndpoint__Secret": SECRET,
    "Broker__ManagedIdentityEndpoint__DefaultAgentIdentity": A2,
}


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), WAIT)


def point_sdks_at(monkeypatch: pytest.MonkeyPatch, broker: RunningBroker, header: str) -> None:
    for name in (
        "IDENTITY_SERVER_THUMBPRINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IMDS_ENDPOINT",
        "AZURE_CLIENT_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", broker.api_urls[0] + "/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", header)


async def msi_get(
    http: aiohttp.ClientSession, broker: RunningBroker, query: str, header: str | None = SECRET
) -> tuple[int, dict[str, Any]]:
    headers = {"X-IDENTITY-HEADER": header} if header is not None else {}
    async with http.get(
        broker.api_urls[0] + "/msi/token?" + query, headers=headers, timeout=aiohttp.ClientTimeout(total=WAIT)
    ) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_azure_identity_managed_identity_credential_gets_agent_tokens(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with broker_factory(**MI_KEYS) as broker:
        point_sdks_at(monkeypatch, broker, SECRET)
        credential = ManagedIdentityCredential(client_id=A1)
        token = await in_thread(credential.get_token, f"{demo.GRAPH_RESOURCE}/.default")
        claims = claims_of(token.token)
        assert claims["oid"] == A1 and claims["idtyp"] == "app"
        assert claims["aud"] in GRAPH_AUDS
        assert token.expires_on > time.time() + 600
        # No client_id ("system-assigned"): the configured default agent identity.
        default = await in_thread(ManagedIdentityCredential().get_token, f"{demo.GRAPH_RESOURCE}/.default")
        assert claims_of(default.token)["oid"] == A2
        # A wrong secret is refused with a clean SDK error.
        monkeypatch.setenv("IDENTITY_HEADER", "wrong-secret-wrong-secret")
        with pytest.raises(ClientAuthenticationError) as info:
            await in_thread(
                ManagedIdentityCredential(client_id=A1).get_token, f"{demo.GRAPH_RESOURCE}/.default"
            )
        assert "401" in str(info.value) and "X-IDENTITY-HEADER" in str(info.value)


async def test_msal_managed_identity_client_gets_agent_tokens(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with broker_factory(**MI_KEYS) as broker:
        point_sdks_at(monkeypatch, broker, SECRET)
        with requests.Session() as session:
            client = msal.ManagedIdentityClient(
                msal.UserAssignedManagedIdentity(client_id=A1), http_client=session
            )
            result = await in_thread(client.acquire_token_for_client, resource=demo.DEMO_API_RESOURCE)
            assert "access_token" in result, result
            claims = claims_of(result["access_token"])
            assert claims["oid"] == A1 and claims["aud"] == demo.DEMO_API_APP_ID
            assert result["expires_in"] > 600

            system = msal.ManagedIdentityClient(msal.SystemAssignedManagedIdentity(), http_client=session)
            result = await in_thread(system.acquire_token_for_client, resource=demo.GRAPH_RESOURCE)
            assert claims_of(result["access_token"])["oid"] == A2

            monkeypatch.setenv("IDENTITY_HEADER", "wrong-secret-wrong-secret")
            refused = msal.ManagedIdentityClient(
                msal.UserAssignedManagedIdentity(client_id=A1), http_client=session
            )
            result = await in_thread(refused.acquire_token_for_client, resource=demo.GRAPH_RESOURCE)
            assert "access_token" not in result
            assert result["error_description"].startswith("401, ")


async def test_protocol_errors_and_resource_forms(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    ok_query = f"api-version=2019-08-01&resource={demo.GRAPH_RESOURCE}&client_id={A1}"
    async with broker_factory(**MI_KEYS) as broker:
        status, body = await msi_get(http, broker, ok_query, header=None)
        assert status == 401 and body["statusCode"] == 401 and "X-IDENTITY-HEADER" in body["message"]
        status, body = await msi_get(http, broker, ok_query, header=SECRET + "x")
        assert status == 401 and "access_token" not in body

        status, body = await msi_get(http, broker, ok_query)
        assert status == 200, body
        assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
        assert (
            body["client_id"] == A1
            and body["resource"] == demo.GRAPH_RESOURCE
            and body["token_type"] == "Bearer"
        )
        assert isinstance(body["expires_on"], str) and int(body["expires_on"]) > time.time() + 600
        first = body["access_token"]
        # Same token for the resource with a trailing slash or as a /.default scope (one cache key).
        for resource in (demo.GRAPH_RESOURCE + "/", demo.GRAPH_RESOURCE + "/.default"):
            status, body = await msi_get(
                http, broker, f"api-version=2019-08-01&resource={resource}&client_id={A1}"
            )
            assert status == 200 and body["access_token"] == first and body["resource"] == resource

        bad = {
            f"resource={demo.GRAPH_RESOURCE}&client_id={A1}": "api-version",
            f"api-version=2018-02-01&resource={demo.GRAPH_RESOURCE}": "2019-08-01",
            f"api-version=2019-08-01&client_id={A1}": "resource",
            f"api-version=2019-08-01&resource={demo.GRAPH_RESOURCE}&principal_id={A1}": "principal_id",
            f"api-version=2019-08-01&resource={demo.GRAPH_RESOURCE}&mi_res_id=/subscriptions/x": "mi_res_id",
            f"api-version=2019-08-01&resource={demo.GRAPH_RESOURCE}&client_id=not-a-guid": "GUID",
        }
        for query, words in bad.items():
            status, body = await msi_get(http, broker, query)
            assert status == 400, (query, body)
            assert body["statusCode"] == 400 and words in body["message"], body
            assert body["error"] == "invalid_request" and body["error_description"] == body["message"]
        # An identity Entra does not know: the refusal, as MI JSON.
        status, body = await msi_get(
            http,
            broker,
            f"api-version=2019-08-01&resource={demo.GRAPH_RESOURCE}&client_id={demo.MI_CLIENT_ID}",
        )
        assert status == 400 and body["statusCode"] == 400 and "access_token" not in body, body


async def test_endpoint_off_unless_configured(broker: RunningBroker, http: aiohttp.ClientSession) -> None:
    async with http.get(
        broker.api_urls[0] + f"/msi/token?api-version=2019-08-01&resource={demo.GRAPH_RESOURCE}",
        headers={"X-IDENTITY-HEADER": SECRET},
    ) as resp:
        assert resp.status == 404


async def test_generated_secret_file(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret_file = tmp_path / "shared" / "identity-header"
    keys = {
        "Broker__ManagedIdentityEndpoint__Enabled": "true",
        "Broker__ManagedIdentityEndpoint__SecretFile": str(secret_file),
    }
    async with broker_factory(**keys) as broker:
        assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
        generated = secret_file.read_text().strip()
        assert len(generated) >= 32
        query = f"api-version=2019-08-01&resource={demo.GRAPH_RESOURCE}&client_id={A1}"
        status, body = await msi_get(http, broker, query, header=generated)
        assert status == 200 and claims_of(body["access_token"])["oid"] == A1
        # Rotation: the file is re-read when it changes (looked at once a second at most).
        secret_file.write_text("rotated-secret-rotated-secret\n")
        async with asyncio.timeout(10):
            while (status := (await msi_get(http, broker, query, header=generated))[0]) == 200:
                await asyncio.sleep(0.1)
        assert status == 401
        status, _ = await msi_get(http, broker, query, header="rotated-secret-rotated-secret")
        assert status == 200


@pytest.mark.parametrize(
    ("keys", "words"),
    [
        ({"Secret": "short"}, "at least 16"),
        ({"Secret": SECRET, "SecretFile": "/tmp/x"}, "not both"),
        ({"Secret": SECRET, "DefaultAgentIdentity": "agent-1"}, "GUID"),
        ({"Enabled": "maybe"}, "true or false"),
        ({"Port": "1"}, "unknown key"),
    ],
)
def test_configuration_errors(emulator: EmulatorServer, keys: dict[str, str], words: str) -> None:
    env = base_env(emulator, **{f"Broker__ManagedIdentityEndpoint__{k}": v for k, v in keys.items()})
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert any("Broker__ManagedIdentityEndpoint__" in p and words in p for p in info.value.problems), (
        info.value
    )
    assert SECRET not in str(info.value)


def test_configuration_defaults_and_redaction(emulator: EmulatorServer) -> None:
    settings = load_settings(env=base_env(emulator))
    assert not settings.managed_identity_endpoint.enabled
    settings = load_settings(env=base_env(emulator, Broker__ManagedIdentityEndpoint__Secret=SECRET))
    assert settings.managed_identity_endpoint.enabled
    assert SECRET not in json.dumps(effective_config(settings))
    assert settings.downstream.max_response_bytes == 10 * 1024 * 1024


async def test_sdks_still_work_in_strict_mode_and_see_policy_refusals(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strict mode (required header, strict scopes) keeps /msi/token usable: MI clients send
    X-IDENTITY-HEADER, never X-Token-Broker-Request. The endpoint has the header routes' policy."""
    async with broker_factory(**MI_KEYS, Broker__Strict="true") as broker:
        point_sdks_at(monkeypatch, broker, SECRET)
        token = await in_thread(ManagedIdentityCredential(client_id=A1).get_token, f"{demo.GRAPH_RESOURCE}/.default")
        assert claims_of(token.token)["oid"] == A1
        with requests.Session() as session:
            client = msal.ManagedIdentityClient(msal.SystemAssignedManagedIdentity(), http_client=session)
            result = await in_thread(client.acquire_token_for_client, resource=demo.DEMO_API_RESOURCE)
            assert claims_of(result["access_token"])["oid"] == A2, result
            # Outside the resource allow-list (default: the configured APIs' resources), and the
            # token-exchange audience: refused with a message naming the cause, no token.
            refused = await in_thread(client.acquire_token_for_client, resource="https://vault.azure.net")
            assert "access_token" not in refused
            assert "Broker__ManagedIdentityEndpoint__AllowedResources" in refused["error_description"], refused
        with pytest.raises(ClientAuthenticationError) as info:
            await in_thread(ManagedIdentityCredential(client_id=A1).get_token, "api://AzureADTokenExchange/.default")
        assert "token-exchange audience" in str(info.value)
