"""Issue 15 item 8 (files): the MSI secret file's location, and a certificate read that would hang.

The broker runs for real (in-process, or as a process for the signal test); files are real
files, directories, FIFOs and ownerships (the ownership cases need root, as CI runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from agent_token_broker.settings import ConfigError
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory, base_env
from tests.support import OutputLines, answers_200, free_port, stop_process, wait_until

CLI = [sys.executable, "-m", "agent_token_broker.cli"]
KEY = "Broker__ManagedIdentityEndpoint__SecretFile"
NOBODY = 65534


def _msi(path: Path) -> dict[str, str]:
    return {"Broker__ManagedIdentityEndpoint__Enabled": "true", KEY: str(path)}


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("NOT TESTED: changing file ownership needs root (CI runs as root)")


async def test_secret_file_in_a_directory_others_can_write_is_refused(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone could plant or swap the file
    for planted in (False, True):
        secret = shared / "identity-header"
        if planted:
            secret.write_text("planted-secret-planted-secret\n")
            secret.chmod(0o600)
        with pytest.raises(ConfigError) as info:
            async with broker_factory(**_msi(secret)):
                pass
        (line,) = info.value.problems
        assert line.startswith(f"{KEY}: refusing the secret file {secret}") and "writable by group or others" in line
        if not planted:
            assert not secret.exists()  # nothing was generated there


async def test_secret_file_planted_by_another_user_is_refused(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, tmp_path: Path
) -> None:
    _need_root()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "identity-header").write_text("planted-secret-planted-secret\n")
    os.chown(theirs / "identity-header", NOBODY, NOBODY)
    os.chown(theirs, NOBODY, NOBODY)
    sticky = tmp_path / "sticky"  # like /tmp: a file someone else created there
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "identity-header").write_text("planted-secret-planted-secret\n")
    os.chown(sticky / "identity-header", NOBODY, NOBODY)
    for path, why in ((theirs / "identity-header", f"directory {theirs} is owned by uid {NOBODY}"),
                      (sticky / "identity-header", f"it is owned by uid {NOBODY}")):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            async with broker_factory(**_msi(path)):
                pass
        assert why in info.value.problems[0], info.value.problems


async def test_secret_file_in_our_private_or_sticky_directory_is_used(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, tmp_path: Path
) -> None:
    private = tmp_path / "private" / "identity-header"  # generated, directory created 0700
    async with broker_factory(**_msi(private)):
        assert private.read_text().strip()
    assert (private.parent.stat().st_mode & 0o777) == 0o700
    sticky = tmp_path / "volume"  # a Kubernetes secret volume: mode 1777, the file ours/root's
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "..data").mkdir(mode=0o755)
    (sticky / "..data" / "identity-header").write_text("mounted-secret-mounted-secret\n")
    (sticky / "identity-header").symlink_to("..data/identity-header")
    async with broker_factory(**_msi(sticky / "identity-header")):
        pass


def _cert_env(emulator: EmulatorServer, path: Path, api: int, ops: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("azuread__", "broker__"))}
    env.update(base_env(emulator, Broker__Listen=f"127.0.0.1:{api}", Broker__OpsListen=f"127.0.0.1:{ops}"))
    env.pop("AzureAd__ClientCredentials__0__ClientSecret")
    env["AzureAd__ClientCredentials__0__SourceType"] = "Path"
    env["AzureAd__ClientCredentials__0__CertificateDiskPath"] = str(path)
    return env


def test_a_fifo_certificate_stops_serve_at_start_without_hanging(emulator: EmulatorServer, tmp_path: Path) -> None:
    fifo = tmp_path / "blueprint.pem"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: never, here
    env = _cert_env(emulator, fifo, free_port(), free_port())
    out = subprocess.run([*CLI, "serve"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        f"config error: AzureAd__ClientCredentials__0__CertificateDiskPath: {fifo}: "
        "file is not a regular file (a FIFO, socket or device?)"
    )


def test_sigterm_stops_the_broker_after_the_certificate_became_a_fifo(
    emulator: EmulatorServer, admin: EmulatorAdmin, tmp_path: Path
) -> None:
    cert = tmp_path / "blueprint.pem"
    cert.write_bytes((emulator.state_dir / "blueprint-cert.pem").read_bytes())
    api, ops = free_port(), free_port()
    proc = subprocess.Popen(
        [*CLI, "serve"], env=_cert_env(emulator, cert, api, ops), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    err = OutputLines(proc.stderr)
    try:
        wait_until(lambda: answers_200(f"http://127.0.0.1:{ops}/readyz"), proc, 30, err.text)
        fifo = tmp_path / "next.pem"
        os.mkfifo(fifo)
        os.replace(fifo, cert)  # the "rotated" certificate is a FIFO: a plain open() would block forever
        query = f"AgentIdentity={demo.AGENT_1_ID}&optionsOverride.RequestAppToken=true"
        reply = requests.get(f"http://127.0.0.1:{api}/AuthorizationHeaderUnauthenticated/graph?{query}", timeout=20)
        problem = reply.json()  # answered at once, not hung on the FIFO
        assert problem["errorCode"] == "credential_unavailable" and "not a regular file" in problem["detail"], problem
        assert stop_process(proc, 15) and proc.returncode == 0
    finally:
        stop_process(proc)
    assert demo.BLUEPRINT_SECRET not in err.join()
