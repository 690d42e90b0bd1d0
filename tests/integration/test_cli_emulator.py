"""``agent-token-broker emulator`` as a process: the environment it prints starts ``serve`` (issue 19.1).

Every credential variant of the banner is pasted into a real shell with the common lines, and
``serve`` started from that shell gets tokens and calls the demo API; a second run on the same
``--state-dir`` keeps the CA and the credential files, so the same environment keeps working.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from entra_emulator import demo
from tests.integration.serve_process import CLI, clean_env
from tests.support import OutputLines, answers_200, stop_process, wait_until

START_TIMEOUT = 60.0
LISTENING = re.compile(r"API listening on (http://[0-9.:]+); ops on (http://[0-9.:]+)")


@dataclass
class Banner:
    text: str
    common: list[str]
    variants: dict[str, str]  # title -> shell line

    def value(self, label: str) -> str:
        match = re.search(rf"^  {label}\s+(\S+)", self.text, re.M)
        assert match is not None, self.text
        return match.group(1)


def _parse(text: str) -> Banner:
    common: list[str] = []
    variants: dict[str, str] = {}
    section, title = "", ""
    for line in text.splitlines():
        if line.startswith("# common"):
            section = "common"
        elif line.startswith("# credential"):
            section, title = "variant", line.split(": ", 1)[1]
        elif line.startswith("# "):
            section = ""
        elif section == "common" and line.startswith("export "):
            common.append(line)
        elif section == "variant" and line.startswith("unset "):
            variants[title] = line
    return Banner(text, common, variants)


def _start_emulator(state_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], Banner]:
    env = clean_env({})
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [*CLI, "emulator", "--port", "0", "--mi-port", "0", "--state-dir", str(state_dir), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err = OutputLines(proc.stdout), OutputLines(proc.stderr)
    try:
        banner = wait_until(lambda: out.through("Ctrl-C"), proc, START_TIMEOUT, lambda: out.text() + err.text())
    except AssertionError:
        stop_process(proc)
        raise
    return proc, _parse(banner)


def _stop(proc: subprocess.Popen[str]) -> None:
    assert stop_process(proc) and proc.returncode == 0


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[Banner]:
    proc, banner = _start_emulator(tmp_path / "state")
    try:
        yield banner
    finally:
        _stop(proc)


def _serve_from_shell(banner: Banner, variant: str, tmp_path: Path) -> tuple[int, str]:
    """Paste the common lines and one variant into bash, then ``serve``; returns the broker's
    exit code and its stderr after two requests and SIGTERM. Port 0 (no port races): the
    addresses are read from the broker's "API listening on" log line."""
    script = "\n".join([
        "set -eu",
        *banner.common,
        banner.variants[variant],
        f"exec {' '.join(CLI)} serve --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --log-level Information",
    ])
    env = clean_env({})
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        env.pop(name, None)
    proc = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    err = OutputLines(proc.stderr)

    def output() -> str:
        return f"{variant}:\n{err.text()}"

    def listening() -> re.Match[str] | None:
        return next((m for line in list(err.lines) if (m := LISTENING.search(line))), None)

    try:
        found = wait_until(listening, proc, START_TIMEOUT, output)
        base, ops = found.group(1), found.group(2)
        wait_until(lambda: answers_200(f"{ops}/readyz"), proc, START_TIMEOUT, output)
        token = requests.get(f"{base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_1_ID}",
                             timeout=30)
        assert token.status_code == 200, (variant, token.text)
        assert token.json()["authorizationHeader"].startswith("Bearer ")
        called = requests.post(f"{base}/DownstreamApiUnauthenticated/demo?AgentIdentity={demo.AGENT_1_ID}",
                               timeout=30)
        assert called.status_code == 200 and called.json()["statusCode"] == 200, (variant, called.text)
        assert json.loads(called.json()["content"])["caller"]["oid"] == demo.AGENT_1_ID
    finally:
        assert stop_process(proc), f"{variant}: serve did not stop on SIGTERM"
    return proc.returncode, err.join()


def test_banner_has_absolute_paths_and_every_variant(emulator_process: Banner, tmp_path: Path) -> None:
    banner = emulator_process
    ca = banner.value("CA certificate")
    assert os.path.isabs(ca) and Path(ca).is_file()
    assert Path(banner.value("state")) == (tmp_path / "state").resolve()
    assert set(banner.variants) == {
        "client secret (development only)", "certificate, PFX with its password",
        "certificate, PEM (key + certificate, no password)",
        "managed identity (this emulator's App Service endpoint)",
    }
    for line in banner.variants.values():
        for path in re.findall(r"CertificateDiskPath=(\S+)", line):
            assert os.path.isabs(path) and Path(path).is_file(), path
    assert f"CertificatePassword={demo.PFX_PASSWORD}" in banner.text
    common = "\n".join(banner.common)
    assert f"REQUESTS_CA_BUNDLE={ca}" in common and "DownstreamApis__graph__BaseUrl=https://127.0.0.1:" in common
    assert "graph.microsoft.com/v1.0" not in banner.text  # offline: no real Microsoft Graph URL


@pytest.mark.parametrize("variant", [
    "client secret (development only)",
    "certificate, PFX with its password",
    "certificate, PEM (key + certificate, no password)",
    "managed identity (this emulator's App Service endpoint)",
])
def test_printed_environment_starts_serve(emulator_process: Banner, tmp_path: Path, variant: str) -> None:
    code, err = _serve_from_shell(emulator_process, variant, tmp_path)
    assert code == 0, err
    assert demo.BLUEPRINT_SECRET not in err and demo.PFX_PASSWORD not in err


def test_second_run_keeps_the_environment_working(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc, first = _start_emulator(state)
    _stop(proc)
    ca = Path(first.value("CA certificate")).read_bytes()
    proc, second = _start_emulator(state)
    try:
        assert "reused from the previous run" in second.text
        assert Path(second.value("CA certificate")).read_bytes() == ca
        # The first run's certificate line (same files) works against the second run.
        second.variants["certificate, PFX with its password"] = first.variants["certificate, PFX with its password"]
        code, err = _serve_from_shell(second, "certificate, PFX with its password", tmp_path)
        assert code == 0, err
    finally:
        _stop(proc)
    proc, third = _start_emulator(state, "--reset")
    _stop(proc)
    assert "(new;" in third.text and Path(third.value("CA certificate")).read_bytes() != ca
