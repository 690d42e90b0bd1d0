"""The emulator as its own process (``python -m entra_emulator``), with a tenant of N agent identities.

Out of the harness's process so its CPU is measured apart and it does not share a GIL with the
load generator (the in-process ``EmulatorServer`` of the small scenarios cannot keep up with a
100k-identity warm-up). Has what ``procs.Broker`` needs (``url``, ``ca_path``) and an admin client.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from loadtests import procs

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (threads included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Emulator:
    """``python -m entra_emulator`` with a tenant of ``n`` agent identities (optionally under cProfile)."""

    def __init__(self, workdir: Path, n: int, profile_out: Path | None = None, src: Path | None = None) -> None:
        spec = procs.tenant_spec(max(n, 3))
        spec_file = workdir / "tenant.json"
        spec_file.write_text(json.dumps(spec))
        self.port, mi_port = procs.free_port(), procs.free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.authority = f"{self.url}/{demo.TENANT_ID}"
        self.state_dir = workdir / "emulator-state"
        self.ca_path = self.state_dir / "ca.pem"
        args = ["--port", str(self.port), "--mi-port", str(mi_port), "--state-dir", str(self.state_dir),
                "--tenant-file", str(spec_file)]
        if profile_out is None:
            cmd = [sys.executable, "-m", "entra_emulator", *args]
        else:  # the emulator returns from main() on SIGTERM, so cProfile writes its stats
            code = ("import cProfile; from entra_emulator.cli import main; "
                    f"cProfile.runctx('main(a)', {{}}, {{'main': main, 'a': {args!r}}}, {str(profile_out)!r})")
            cmd = [sys.executable, "-c", code]
        self._log = open(workdir / "emulator.log", "ab")
        # ``src``: run another checkout's emulator (an A/B against a baseline commit).
        self.proc = subprocess.Popen(cmd, cwd=src or procs.ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # a 100k-agent tenant file takes a while to load
        while not self.ca_path.exists() or not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emulator did not start (see {workdir / 'emulator.log'})")
            time.sleep(0.1)

    def _answers(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        try:
            with urllib.request.urlopen(f"{self.authority}/v2.0/.well-known/openid-configuration",
                                        timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def admin(self, timeout: float = 60.0) -> EmulatorAdmin:
        return EmulatorAdmin(self.url, self.ca_path, timeout=timeout)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def token_counts(self) -> dict[str, int]:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        with urllib.request.urlopen(f"{self.url}/_emulator/log?since={10**12}", timeout=10, context=ctx) as resp:
            counts: dict[str, int] = json.load(resp)["counts"]
        return counts

    def stop(self) -> None:
        procs.stop_process(self.proc, timeout=60)
        self._log.close()
