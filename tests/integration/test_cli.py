"""The real console script: check-config redaction and errors, serve as a process, a sidecar-style client."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import base_env
from tests.integration.serve_process import clean_env, serve_process

CLI = [sys.executable, "-m", "agent_token_broker.cli"]


def test_check_config_redacts_secrets(emulator: EmulatorServer) -> None:
    env = clean_env(base_env(emulator))
    out = subprocess.run([*CLI, "check-config"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert demo.BLUEPRINT_SECRET not in out.stdout + out.stderr
    assert "<redacted>" in out.stdout
    assert demo.BLUEPRINT_APP_ID in out.stdout


def test_bad_config_is_one_line_per_problem_without_traceback() -> None:
    env = clean_env(
        {
            "AzureAd__TenantId": "not a tenant!",
            "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
            "AzureAd__ClientCredentials__0__ClientSecret": "s3cr3t-value-xyz",
            "Broker__Listen": "nonsense:port",
        }
    )
    out = subprocess.run([*CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("config error: ") for line in lines), out.stderr
    joined = "\n".join(lines)
    assert "AzureAd__ClientId" in joined and "AzureAd__TenantId" in joined and "Broker__Listen" in joined
    assert "Traceback" not in out.stderr and "s3cr3t-value-xyz" not in out.stderr


@pytest.fixture
def serve_base(emulator: EmulatorServer, admin: EmulatorAdmin) -> Iterator[str]:
    with serve_process(emulator) as served:
        yield served.base


def test_sidecar_client_works_unchanged(serve_base: str, admin: EmulatorAdmin) -> None:
    """What the Agents SDKs' sidecar providers do: GET with AgentIdentity[/AgentUserId], expect 'Bearer '."""
    session = requests.Session()
    for query in (
        f"AgentIdentity={demo.AGENT_1_ID}",
        f"AgentIdentity={demo.AGENT_1_ID}&AgentUserId={demo.AGENT_USER_OID}",
        f"AgentIdentity={demo.AGENT_2_ID}&optionsOverride.RequestAppToken=true",
    ):
        resp = session.get(f"{serve_base}/AuthorizationHeaderUnauthenticated/graph?{query}", timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json()["authorizationHeader"].startswith("Bearer ")
    user = admin.user_token(demo.DEMO_USER_UPN)
    resp = session.get(
        f"{serve_base}/AuthorizationHeader/graph?agentidentity={demo.AGENT_1_ID}",
        headers={"Authorization": f"Bearer {user}"}, timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["authorizationHeader"].startswith("Bearer ")
    health = session.get(f"{serve_base}/healthz", timeout=5)
    assert health.status_code == 200 and health.text == "Healthy"


def test_port_in_use_is_a_clear_error(emulator: EmulatorServer, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = clean_env(base_env(emulator, Broker__Listen=f"127.0.0.1:{port}", Broker__OpsListen="off"))
        env["REQUESTS_CA_BUNDLE"] = str(emulator.ca_path)
        out = subprocess.run([*CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "cannot listen" in out.stderr and "Traceback" not in out.stderr
