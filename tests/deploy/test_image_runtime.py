"""Run the image's exact command (Dockerfile ENTRYPOINT + CMD) in the test venv, against the emulator.

No Docker engine exists on these machines, so this is the closest honest check of the image:
the process the container would start, with the image's ENV and the Kubernetes ConfigMap's keys
(the authority and the token file pointed at the emulator), then the Dockerfile's HEALTHCHECK
command and the manifests' probe paths against it, the example agent from the Deployment
getting a token, and a clean exit on the Dockerfile's STOPSIGNAL.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_token_broker.settings.tree import KNOWN_SECTIONS
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.deploy.helpers import (
    AGENT_CONTAINER,
    BROKER_CONTAINER,
    VENV_BIN,
    broker_env,
    container,
    entrypoint_command,
    env_of,
    healthcheck,
    only,
    pod_spec,
    runtime_stage,
)
from tests.support import free_port

WAIT_SECONDS = 30.0


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def _until(predicate: object, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the broker exited ({process.returncode}) while waiting for {what}"
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {WAIT_SECONDS:.0f}s waiting for {what}")


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the example agent printed nothing"
    return process.stdout.readline().decode()


def _container_env(tmp: Path) -> dict[str, str]:
    """The host environment without configuration keys, then the image's ENV (/tmp -> tmp)."""
    sections = tuple(s.lower() + "__" for s in KNOWN_SECTIONS)
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(sections)}
    for key, value in env_of(runtime_stage()).items():
        env[key] = str(tmp) + value[len("/tmp") :] if value.startswith("/tmp") else value
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def broker_process(emulator: EmulatorServer, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    tmp = tmp_path / "tmp"  # stands in for the container's tmpfs at /tmp (also WORKDIR)
    tmp.mkdir()
    # The projected service account token, for the manifests' namespace and service account.
    account = only("ServiceAccount")["metadata"]["name"]
    namespace = only("Namespace")["metadata"]["name"]
    token_file = tmp_path / "azure-identity-token"
    admin = EmulatorAdmin(emulator.url, emulator.ca_path)
    token_file.write_text(admin.workload_token(subject=f"system:serviceaccount:{namespace}:{account}"))
    api_port, ops_port = free_port(), free_port()
    env = _container_env(tmp)
    env.update(broker_env())  # the ConfigMap, as-is, except what points at Azure or at fixed ports:
    env.update(
        {
            "AzureAd__Instance": emulator.url + "/",
            "AzureAd__TenantId": demo.TENANT_ID,
            "AzureAd__ClientId": demo.BLUEPRINT_APP_ID,
            "AzureAd__ClientCredentials__0__SignedAssertionFileDiskPath": str(token_file),
            "Broker__Listen": f"127.0.0.1:{api_port}",
            "Broker__OpsListen": f"127.0.0.1:{ops_port}",
            "REQUESTS_CA_BUNDLE": str(emulator.ca_path),
            "SSL_CERT_FILE": str(emulator.ca_path),
        }
    )
    command = entrypoint_command(runtime_stage())
    assert shutil.which(command[0], path=env["PATH"]), (
        f"{command[0]} is not on PATH: install the project into the venv (pip install -e '.[test]')"
    )
    log = (tmp_path / "broker.log").open("wb")
    process = subprocess.Popen(command, env=env, cwd=tmp, stdout=log, stderr=log)
    try:
        yield process, env
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_image_command_passes_its_healthcheck_and_probes(
    broker_process: tuple[subprocess.Popen[bytes], dict[str, str]], tmp_path: Path
) -> None:
    process, env = broker_process
    stage = runtime_stage()
    _, check = healthcheck(stage)

    def healthy() -> bool:
        return subprocess.run(check, env=env, capture_output=True, timeout=10, check=False).returncode == 0

    _until(healthy, "the Dockerfile HEALTHCHECK to pass", process)

    ops = "http://" + env["Broker__OpsListen"]
    broker = container(BROKER_CONTAINER)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = broker[probe]["httpGet"]["path"]
        _until(lambda path=path: _http_status(ops + path) == 200, f"{probe} {path} -> 200", process)
    assert _http_status(ops + "/metrics") == 200

    # The example agent of the Deployment, unchanged, gets an agent token from this broker.
    agent = container(AGENT_CONTAINER)
    agent_env = dict(env)
    agent_env.update({"SIDECAR_URL": "http://" + env["Broker__Listen"], "AGENT_IDENTITY": demo.AGENT_1_ID})
    example = subprocess.Popen(agent["command"], env=agent_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        line = _first_line(example, WAIT_SECONDS)
    finally:
        example.kill()
        example.wait(timeout=10)
    assert line.startswith("token for "), line
    assert demo.AGENT_1_ID in line, "the token's subject is the agent identity"

    # The container runtime's stop signal ends the broker cleanly.
    process.send_signal(getattr(signal, stage.one("STOPSIGNAL").args))
    assert process.wait(timeout=20) == 0, (tmp_path / "broker.log").read_text()[-3000:]
    assert not healthy(), "the HEALTHCHECK must fail once the broker is gone"
    # Nothing but the tmpfs stand-in was written to.
    assert pod_spec()["initContainers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_image_configuration_serves_agent_tokens_on_loopback(
    broker_process: tuple[subprocess.Popen[bytes], dict[str, str]],
) -> None:
    process, env = broker_process
    ops = "http://" + env["Broker__OpsListen"]
    _until(lambda: _http_status(ops + "/readyz") == 200, "readiness", process)
    url = f"http://{env['Broker__Listen']}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_1_ID}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
        assert "no-store" in response.headers["Cache-Control"]
    assert body["authorizationHeader"].startswith("Bearer ")
    assert env["Broker__Listen"].startswith("127.0.0.1:")
