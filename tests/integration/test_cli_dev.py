"""``agent-token-broker dev`` / ``make dev`` as real processes (README's first command, issue 19.3/19.4).

Every command line the banner prints is run, verbatim, in one bash session (curl + python3, as a
user would paste them): every flow it claims works offline, including ``/DownstreamApi`` against the
emulator's demo APIs and ``/msi/token``. The banner appears only once the listeners are bound, the
port can be overridden (``make dev ARGS=...`` or ``Broker__Listen``), and the temporary state
directory (private keys) is gone after the process exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import IO, Any

import pytest
import requests

from entra_emulator import demo
from tests.integration.serve_process import CLI, clean_env

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
MARK = "@@@rc="


@dataclass
class Dev:
    proc: subprocess.Popen[str]
    banner: str
    stderr: list[str]

    def value(self, label: str) -> str:
        match = re.search(rf"^  {label}\s+(\S+)", self.banner, re.M)
        assert match is not None, self.banner
        return match.group(1)

    def commands(self) -> list[str]:
        return [line[2:] for line in self.banner.splitlines() if line.startswith(("  curl ", "  USER_TOKEN="))]

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Signal the whole process group (what Ctrl-C in a terminal does); returns stderr."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise
        time.sleep(0.1)  # let the reader threads take the last lines
        return "".join(self.stderr)


def _require_curl() -> None:
    if shutil.which("curl"):
        return
    if os.geteuid() == 0:
        pytest.fail("curl missing (scripts/ensure-system-packages installs it when running as root)")
    pytest.skip("DEV EXAMPLES NOT RUN: curl missing: apt-get install -y curl")


def _env(**extra: str) -> dict[str, str]:
    env = clean_env(extra)
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        env.pop(name, None)
    return env


def _drain(stream: IO[str] | None, put: Callable[[str], None]) -> None:
    for line in stream or ():
        put(line)


def _start(cmd: Sequence[str], env: dict[str, str]) -> Dev:
    """Start ``cmd`` in its own process group and read stdout up to the end of the banner."""
    proc = subprocess.Popen(list(cmd), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    out: Queue[str] = Queue()
    running = Dev(proc, "", [])
    threading.Thread(target=_drain, args=(proc.stdout, out.put), daemon=True).start()
    threading.Thread(target=_drain, args=(proc.stderr, running.stderr.append), daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while not any("Ctrl-C" in line for line in lines):
        try:
            lines.append(out.get(timeout=max(0.1, deadline - time.monotonic())))
        except Empty:
            err = running.stop(signal.SIGKILL)
            raise AssertionError("dev did not print its banner:\n" + "".join(lines) + err) from None
    running.banner = "".join(lines)
    return running


def _wait_ready(ops_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while requests.get(f"{ops_url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "not ready"
        time.sleep(0.1)


@pytest.fixture
def dev() -> Iterator[Dev]:
    running = _start([*CLI, "dev", "--listen", "127.0.0.1:0", "--ops-listen", "off"], _env())
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()


def _run_commands(commands: list[str]) -> list[tuple[str, int, str]]:
    """Run the lines in one bash session (USER_TOKEN carries over); (line, exit code, output) each."""
    script = ["set -u -o pipefail"]
    for line in commands:
        script += [line, f'echo "{MARK}$?"']
    out = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=120,
                         env=_env())
    chunks = out.stdout.split(MARK)
    results = []
    for i, line in enumerate(commands):
        rc_text, _, _ = chunks[i + 1].partition("\n")
        output = chunks[i].split("\n", 1)[1] if i else chunks[0]
        results.append((line, int(rc_text), output.strip()))
    return results


def _check_output(line: str, output: str) -> dict[str, Any]:
    value = json.loads(output)
    assert isinstance(value, dict) and "type" not in value, (line, output)
    if "/DownstreamApi" in line:
        assert value["statusCode"] == 200, (line, output)
        assert isinstance(value["content"], dict), (line, output)
    else:
        assert value["iss"].startswith("https://127.0.0.1:") and value["tid"] == demo.TENANT_ID, (line, output)
    return value


def test_every_printed_command_works(dev: Dev) -> None:
    _require_curl()
    # Bound before the banner: the first request needs no retry.
    base = dev.value("broker API")
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    commands = dev.commands()
    assert len(commands) == 9, dev.banner  # 3 header-route, user token + OBO, 3 DownstreamApi, /msi/token
    assert "graph.microsoft.com/v1.0" not in dev.banner  # offline: the graph API is the emulator's demo API
    results = _run_commands(commands)
    outputs = {}
    for line, rc, output in results:
        assert rc == 0, (line, output)
        if line.startswith("USER_TOKEN="):
            assert output == "", output
            continue
        outputs[line] = _check_output(line, output)
    values = list(outputs.values())
    autonomous, by_upn, by_oid, obo, call_demo, call_graph_agent_user, call_graph_obo, msi = values
    assert autonomous["idtyp"] == "app" and autonomous["oid"] == demo.AGENT_1_ID
    assert by_upn["upn"] == by_oid["upn"] == demo.AGENT_USER_UPN
    assert obo["upn"] == demo.DEMO_USER_UPN and obo["azp"] == demo.AGENT_1_ID
    assert call_demo["content"]["caller"]["oid"] == demo.AGENT_1_ID
    assert call_demo["content"]["caller"]["roles"] == ["Data.Read"]
    assert call_graph_agent_user["content"]["userPrincipalName"] == demo.AGENT_USER_UPN
    assert call_graph_obo["content"]["userPrincipalName"] == demo.DEMO_USER_UPN
    assert msi["oid"] == demo.AGENT_1_ID and msi["aud"] == demo.GRAPH_RESOURCE
    state = Path(dev.value("state"))
    assert (state / "blueprint-key.pem").is_file()
    err = dev.stop()
    assert dev.proc.returncode == 0, err
    assert not state.exists(), "dev left its temporary state directory (private keys) behind"
    assert demo.BLUEPRINT_SECRET not in err and "Traceback" not in err


def test_msi_example_omitted_when_the_endpoint_is_off(tmp_path: Path) -> None:
    running = _start([*CLI, "dev", "--listen", "127.0.0.1:0", "--ops-listen", "off", "--state-dir",
                      str(tmp_path), "--set", "Broker__ManagedIdentityEndpoint__Enabled=false"], _env())
    try:
        assert "/msi/token" in running.banner and "is off" in running.banner
        assert not any("/msi/token?" in c for c in running.commands())
        assert len(running.commands()) == 8
    finally:
        running.stop()
    assert running.proc.returncode == 0
    assert (tmp_path / "ca.pem").is_file()  # --state-dir is kept


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_temporary_state_directory_is_removed_on_exit(sig: int) -> None:
    running = _start([*CLI, "dev", "--listen", "127.0.0.1:0", "--ops-listen", "off"], _env())
    state = Path(running.value("state"))
    assert state.is_dir() and "removed on exit" in running.banner
    assert oct(state.stat().st_mode & 0o777) == oct(0o700)
    err = running.stop(sig)
    assert running.proc.returncode == 0, err
    assert not state.exists()


def _make_dev(env: dict[str, str], args: str | None) -> list[str]:
    bindir = Path(sys.executable).parent
    assert (bindir / "agent-token-broker").exists(), f"run the tests with the project's venv ({bindir})"
    cmd = ["make", "-s", "-o", ".venv/.installed", f"BIN={bindir}", "dev"]
    return [*cmd, f"ARGS={args}"] if args is not None else cmd


@pytest.mark.parametrize("how", ["ARGS", "environment"])
def test_make_dev_takes_a_port_override(how: str) -> None:
    if not shutil.which("make"):
        pytest.fail("make missing (README's quickstart needs it)")
    # Port 0 (any free port; the banner shows the bound one) keeps the test free of port races;
    # the defaults are 5000 and 9464, so other ports in the banner mean the override was applied.
    if how == "ARGS":
        cmd, env = _make_dev(_env(), "--listen 127.0.0.1:0 --ops-listen 127.0.0.1:0"), _env()
    else:
        env = _env(Broker__Listen="127.0.0.1:0", Broker__OpsListen="127.0.0.1:0")
        cmd = _make_dev(env, None)
    running = _start(cmd, env)
    try:
        api, ops = running.value("broker API"), running.value("ops")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", api) and re.fullmatch(r"http://127\.0\.0\.1:\d+", ops)
        assert not api.endswith(":5000") and not ops.endswith(":9464"), (api, ops)
        resp = requests.get(f"{api}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_1_ID}",
                            timeout=30)
        assert resp.status_code == 200, resp.text
        _wait_ready(ops)
    finally:
        running.stop()


def test_busy_port_fails_before_any_banner_and_says_how_to_change_it() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([*CLI, "dev", "--listen", f"127.0.0.1:{port}", "--ops-listen", "off"],
                             env=_env(), capture_output=True, text=True, timeout=90)
    assert out.returncode == 1, out.stderr
    assert "curl" not in out.stdout and "Ctrl-C" not in out.stdout  # nothing printed that cannot work
    assert "cannot listen" in out.stderr and 'make dev ARGS="--listen' in out.stderr
    assert "Traceback" not in out.stderr
    leftovers = re.findall(r"/tmp/agent-token-broker-dev-\w+", out.stderr)
    assert all(not Path(p).exists() for p in leftovers)
