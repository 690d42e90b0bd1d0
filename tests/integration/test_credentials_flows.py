"""Each blueprint credential kind end to end (emulator + MSAL), fallback order, and file rotation."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory, base_env
from tests.integration.helpers import bearer_claims, get

A1 = demo.AGENT_1_ID
PATH = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
CRED = "AzureAd__ClientCredentials__0__"


def env_with(emulator: EmulatorServer, **cred: str) -> dict[str, str]:
    env = base_env(emulator)
    for key in [k for k in env if k.startswith(CRED)]:
        del env[key]
    env.update({CRED + k: v for k, v in cred.items()})
    return env


async def assert_agent_token(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, env: dict[str, str]
) -> None:
    async with broker_factory(env) as broker:
        status, body, _ = await get(http, broker, PATH)
        assert status == 200, body
        assert bearer_claims(body)["oid"] == A1


@pytest.mark.parametrize(
    ("filename", "password"),
    [("blueprint-cert.pem", None), ("blueprint.pfx", "demo-pfx-password")],
)
async def test_certificate_credential(
    emulator: EmulatorServer,
    admin: EmulatorAdmin,
    broker_factory: BrokerFactory,
    http: aiohttp.ClientSession,
    filename: str,
    password: str | None,
) -> None:
    cred = {"SourceType": "Path", "CertificateDiskPath": str(emulator.state_dir / filename)}
    if password:
        cred["CertificatePassword"] = password
    await assert_agent_token(broker_factory, http, env_with(emulator, **cred))
    assert admin.counts().get("t1") == 1


async def test_workload_identity_file_credential_and_rotation(
    emulator: EmulatorServer,
    admin: EmulatorAdmin,
    broker_factory: BrokerFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(admin.workload_token(subject="system:serviceaccount:other:untrusted"))
    env = env_with(
        emulator, SourceType="SignedAssertionFilePath", SignedAssertionFileDiskPath=str(token_file)
    )
    env["Broker__Cache__NegativeTtlSeconds"] = "0"
    async with broker_factory(env) as broker:
        status, body, _ = await get(http, broker, PATH)
        assert status == 401, body  # the authority does not trust that subject
        # The kubelet rotates the file (atomic rename): the next request uses the new token, no restart.
        fresh = tmp_path / "new-token"
        fresh.write_text(admin.workload_token())
        os.replace(fresh, token_file)
        status, body, _ = await get(http, broker, PATH)
        assert status == 200, body
        assert bearer_claims(body)["oid"] == A1


async def test_managed_identity_credential(
    emulator: EmulatorServer,
    admin: EmulatorAdmin,
    broker_factory: BrokerFactory,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", emulator.mi_url + "/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", emulator.mi_secret)
    env = env_with(
        emulator, SourceType="SignedAssertionFromManagedIdentity", ManagedIdentityClientId=demo.MI_CLIENT_ID
    )
    await assert_agent_token(broker_factory, http, env)
    assert admin.counts().get("mi", 0) >= 1


async def test_credentials_tried_in_index_order(
    emulator: EmulatorServer,
    admin: EmulatorAdmin,
    broker_factory: BrokerFactory,
    http: aiohttp.ClientSession,
) -> None:
    env = env_with(emulator, SourceType="ClientSecret", ClientSecret="wrong-secret")
    env["AzureAd__ClientCredentials__1__SourceType"] = "Path"
    env["AzureAd__ClientCredentials__1__CertificateDiskPath"] = str(emulator.state_dir / "blueprint.pfx")
    env["AzureAd__ClientCredentials__1__CertificatePassword"] = "demo-pfx-password"
    await assert_agent_token(broker_factory, http, env)
    t1_statuses = [r["status"] for r in admin.log()["requests"] if r["leg"] == "t1"]
    assert t1_statuses == [401, 200] or t1_statuses == [400, 200], t1_statuses
