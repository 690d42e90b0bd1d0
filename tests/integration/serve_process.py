"""A real ``agent-token-broker serve`` process wired to the emulator, for tests that need one.

The process is started with the integration tests' base configuration plus extra keys, waited
for (``/readyz``, bounded), and stopped with SIGTERM; its stderr (JSON log lines) is returned
for assertions. It never holds the blueprint secret in its output.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from entra_emulator import demo
from entra_emulator.runner import EmulatorServer
from tests.integration.conftest import base_env
from tests.support import OutputLines, answers_200, free_port, stop_process, wait_until

CLI = [sys.executable, "-m", "agent_token_broker.cli"]
READY_SECONDS = 30.0
STOP_SECONDS = 20.0


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without broker keys, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().startswith(("azuread__", "broker__", "downstreamapis__", "sidecar__"))
    }
    env.update(extra)
    return env


@dataclass
class Served:
    base: str  # the API listener, http://127.0.0.1:<port>
    ops: str  # the ops listener
    process: subprocess.Popen[str]
    stderr: str = ""
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """The process's resident set size, from /proc (VmRSS)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")


@contextlib.contextmanager
def serve_process(emulator: EmulatorServer, **extra: str) -> Iterator[Served]:
    """Run ``serve`` with the base test configuration plus ``extra``; stop it on exit."""
    port, ops = free_port(), free_port()
    env = clean_env(base_env(emulator, Broker__Listen=f"127.0.0.1:{port}", Broker__OpsListen=f"127.0.0.1:{ops}", **extra))
    env["REQUESTS_CA_BUNDLE"] = str(emulator.ca_path)
    proc = subprocess.Popen([*CLI, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    served = Served(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops}", proc)
    err = OutputLines(proc.stderr)
    try:
        wait_until(lambda: answers_200(f"{served.ops}/readyz"), proc, READY_SECONDS, err.text)
        yield served
    finally:
        stopped = stop_process(proc, STOP_SECONDS)
        served.stderr = err.join()
        served.log = [json.loads(line) for line in err.lines if line.startswith("{")]
    assert stopped, "serve did not stop on SIGTERM"
    assert proc.returncode == 0, served.stderr
    assert demo.BLUEPRINT_SECRET not in served.stderr
