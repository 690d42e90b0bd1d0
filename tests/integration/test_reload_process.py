"""Reload without restart, as an operator does it: a real ``serve`` process, a real SIGHUP, a
rewritten ``--config`` file. A changed allow-list takes effect at once, also for requests the
broker remembered, while the token cache is kept (the same token, no call to the emulator); an
invalid configuration is refused with one log line and the running one stays in force.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.test_cli_dev import _env, _start
from tests.support import OutputLines, answers_200, free_port, stop_process, wait_until

CLI = [sys.executable, "-m", "agent_token_broker.cli"]
A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
WAIT_SECONDS = 30.0


@dataclass
class Broker:
    """A ``serve`` process reading ``config``; its stderr lines collected as they come."""

    proc: subprocess.Popen[str]
    config: Path
    base: str
    ops: str
    out: OutputLines

    @property
    def lines(self) -> list[str]:
        return self.out.lines

    def path(self, agent: str) -> str:
        return f"{self.base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={agent}"

    def token(self, agent: str) -> str:
        resp = requests.get(self.path(agent), timeout=20)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["authorizationHeader"])

    def refused(self, agent: str) -> dict[str, Any]:
        resp = requests.get(self.path(agent), timeout=20)
        assert resp.status_code == 403, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def wait_line(self, since: int, match: Callable[[str], bool]) -> str:
        return wait_line(self.proc, self.lines, since, match)

    def metric(self, name: str) -> float:
        text = requests.get(f"{self.ops}/metrics", timeout=10).text
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
        assert len(values) == 1, name
        return values[0]

    def reloads(self, result: str) -> float:
        return self.metric(f'agent_token_broker_config_reloads_total{{result="{result}"}}')


def config(emulator: EmulatorServer, port: int, ops: int, allowed: list[str], **broker: Any) -> dict[str, Any]:
    return {
        "AzureAd": {
            "Instance": emulator.url + "/",
            "TenantId": demo.TENANT_ID,
            "ClientId": demo.BLUEPRINT_APP_ID,
            "ClientCredentials": [{"SourceType": "ClientSecret", "ClientSecret": demo.BLUEPRINT_SECRET}],
        },
        "DownstreamApis": {"graph": {"Scopes": [f"{demo.GRAPH_RESOURCE}/.default"]}},
        "Broker": {
            "Listen": f"127.0.0.1:{port}",
            "OpsListen": f"127.0.0.1:{ops}",
            "AllowedAgentIdentities": allowed,
            "ConfigWatchSeconds": 0,
            **broker,
        },
        "Logging": {"LogLevel": {"Default": "Information"}},
    }


def wait_line(proc: subprocess.Popen[str], lines: list[str], since: int, match: Callable[[str], bool]) -> str:
    """The first line after ``since`` that ``match``es, as it comes (bounded)."""
    return wait_until(lambda: next((line for line in lines[since:] if match(line)), None), proc, WAIT_SECONDS,
                      lambda: "\n".join(lines[since:]))  # fmt: skip


def write(path: Path, content: dict[str, Any] | str) -> None:
    """Replace the file at once (write aside, rename), as a ConfigMap update or an editor does."""
    aside = path.with_name(path.name + ".new")
    aside.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    os.replace(aside, path)


@pytest.fixture
def broker(emulator: EmulatorServer, admin: EmulatorAdmin, tmp_path: Path) -> Iterator[tuple[Broker, Callable[..., dict[str, Any]]]]:
    port, ops = free_port(), free_port()
    path = tmp_path / "appsettings.json"

    def make(allowed: list[str], **extra: Any) -> dict[str, Any]:
        return config(emulator, port, ops, allowed, **extra)

    write(path, make([A1, A2]))
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("azuread__", "broker__", "downstreamapis__", "logging__"))}
    env["REQUESTS_CA_BUNDLE"] = str(emulator.ca_path)
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    running = Broker(proc, path, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops}", OutputLines(proc.stderr))
    try:
        wait_until(lambda: answers_200(f"{running.ops}/readyz"), proc, WAIT_SECONDS, running.out.text)
        yield running, make
    finally:
        assert stop_process(proc), "serve did not stop on SIGTERM"
        running.out.join()
    assert proc.returncode == 0, "\n".join(running.lines)
    text = "\n".join(running.lines)
    assert "Traceback" not in text and demo.BLUEPRINT_SECRET not in text


def _reload_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "configuration reload" in line]


def test_sighup_applies_a_changed_allow_list_keeps_the_cache_and_refuses_a_broken_config(
    broker: tuple[Broker, Callable[..., dict[str, Any]]], admin: EmulatorAdmin
) -> None:
    b, make = broker
    first, second = b.token(A1), b.token(A2)
    assert b.token(A2) == second  # remembered decision, cache hit
    seq = admin.last_seq()

    # 1. SIGHUP with a narrower allow-list: A2 refused at once (its decision was remembered), A1 served
    #    the same cached token with no call to Entra.
    write(b.config, make([A1]))
    mark = len(b.lines)
    b.proc.send_signal(signal.SIGHUP)
    line = b.wait_line(mark, lambda s: "configuration reload (SIGHUP)" in s)
    assert "applied Broker__AllowedAgentIdentities" in line and "restart" not in line, line
    assert b.refused(A2)["type"].endswith("agent-not-allowed")
    assert b.token(A1) == first
    assert admin.token_requests(seq) == []
    assert b.reloads("applied") == 1 and b.proc.poll() is None

    # 2. Broken configurations (a bad value, then bad JSON): refused with one line each naming the
    #    problem; the running configuration stays in force.
    for broken, expected in (
        (make(["not-an-agent-id"]), "Broker__AllowedAgentIdentities"),
        ('{"Broker": {"AllowedAgentIdentities": [', "invalid JSON"),
    ):
        write(b.config, broken)
        mark = len(b.lines)
        b.proc.send_signal(signal.SIGHUP)
        line = b.wait_line(mark, lambda s: "configuration reload" in s)
        assert "refused, the running configuration stays in force" in line and expected in line, line
        assert b.refused(A2)["type"].endswith("agent-not-allowed")
        assert b.token(A1) == first
        assert len(_reload_lines(b.lines[mark:])) == 1 and '"level": "warning"' in line
        assert not [s for s in b.lines[mark:] if "Traceback" in s or '"level": "error"' in s]
    assert b.reloads("rejected") == 2 and b.reloads("applied") == 1
    assert admin.token_requests(seq) == []

    # 3. Both agents again, and the file watch on: A2 gets its token from before, still cached.
    write(b.config, make([A1, A2], ConfigWatchSeconds=0.2))
    mark = len(b.lines)
    b.proc.send_signal(signal.SIGHUP)
    line = b.wait_line(mark, lambda s: "configuration reload (SIGHUP)" in s)
    assert "applied Broker__ConfigWatchSeconds, Broker__AllowedAgentIdentities" in line, line
    assert b.token(A2) == second and b.token(A1) == first

    # 4. No signal: the watch sees the rewritten file.
    write(b.config, make([A2], ConfigWatchSeconds=0.2))
    mark = len(b.lines)
    line = b.wait_line(mark, lambda s: "configuration reload (config file changed)" in s)
    assert "applied Broker__AllowedAgentIdentities" in line, line
    assert b.refused(A1)["type"].endswith("agent-not-allowed")
    assert b.token(A2) == second
    assert admin.token_requests(seq) == []

    # 5. A key that needs a restart is named, not applied; the metric says a restart is pending.
    port = b.ops.rsplit(":", 1)[1]
    write(b.config, make([A2], ConfigWatchSeconds=0.2, OpsListen=f"127.0.0.1:{int(port) + 1}"))
    mark = len(b.lines)
    line = b.wait_line(mark, lambda s: "configuration reload (config file changed)" in s)
    assert "nothing applied" in line and "needs a restart" in line and "Broker__OpsListen" in line, line
    assert b.metric("agent_token_broker_config_restart_pending") == 1
    assert b.reloads("restart_required") == 1
    assert b.token(A2) == second


def test_dev_reloads_its_config_file_on_sighup(tmp_path: Path) -> None:
    """``dev --config`` reloads as ``serve`` does (the dev wiring of the emulator stays)."""
    path = tmp_path / "appsettings.json"
    write(path, {"Broker": {"AllowedAgentIdentities": [A1, A2], "ConfigWatchSeconds": 0},
                 "Logging": {"LogLevel": {"Default": "Information"}}})  # fmt: skip
    dev = _start([*CLI, "dev", "--config", str(path), "--listen", "127.0.0.1:0", "--ops-listen", "off",
                  "--state-dir", str(tmp_path / "state")], _env())  # fmt: skip
    try:
        base = dev.value("broker API")
        url = f"{base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
        first = requests.get(url, timeout=20)
        assert first.status_code == 200, first.text
        write(path, {"Broker": {"AllowedAgentIdentities": [A2], "ConfigWatchSeconds": 0},
                     "Logging": {"LogLevel": {"Default": "Information"}}})  # fmt: skip
        dev.proc.send_signal(signal.SIGHUP)
        line = wait_line(dev.proc, dev.stderr, 0, lambda s: "configuration reload (SIGHUP)" in s)
        assert "applied Broker__AllowedAgentIdentities" in line and "restart" not in line, line
        refused = requests.get(url, timeout=20)
        assert refused.status_code == 403, refused.text
    finally:
        err = dev.stop()
    assert dev.proc.returncode == 0, err
