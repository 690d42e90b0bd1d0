"""Processes under test: the emulator (thread), the broker, the aiohttp baseline and nginx (subprocesses).

Everything listens on free loopback ports; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from entra_emulator import demo
from entra_emulator.runner import EmulatorServer

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = READY_TIMEOUT, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll ``url`` until it answers 200; returns the seconds waited."""
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{url} not ready after {timeout:.0f}s")
        time.sleep(0.02)


def proc_stats(pid: int) -> dict[str, int]:
    """RSS (KiB) and open fd count of a process, from /proc."""
    rss = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` (if still running), wait up to ``timeout``, then kill."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def agent_ids(n: int) -> list[str]:
    """``n`` deterministic agent identity ids (the first two are the demo tenant's agents)."""
    fixed = [demo.AGENT_1_ID, demo.AGENT_2_ID]
    extra = [f"{i:08x}-bead-4e6f-9a1b-{i:012x}" for i in range(max(0, n - len(fixed)))]
    return (fixed + extra)[:n]


def tenant_spec(n_agents: int) -> dict[str, Any] | None:
    """The demo tenant plus enough agent identities (with app consent to both APIs); None = demo as is."""
    if n_agents <= 2:
        return None
    from entra_emulator.tenant import default_spec

    spec = default_spec()
    extra = agent_ids(n_agents)[2:]
    spec["agents"] += [{"app_id": a, "blueprint": demo.BLUEPRINT_APP_ID, "tenant": demo.TENANT_ID} for a in extra]
    for res, role in ((demo.GRAPH_RESOURCE, "User.Read.All"), (demo.DEMO_API_RESOURCE, "Data.Read")):
        spec["app_consents"] += [{"client_id": a, "resource": res, "roles": [role]} for a in extra]
    return spec


def start_emulator(state_dir: Path, n_agents: int = 2) -> EmulatorServer:
    return EmulatorServer(state_dir, spec=tenant_spec(n_agents)).start()


class Broker:
    """``agent-token-broker serve`` as a subprocess (uvloop, Warning logs), ops listener for readiness."""

    def __init__(self, emulator: EmulatorServer | Any, log_path: Path, extra: Mapping[str, str] | None = None,
                 profile_out: Path | None = None, *, gc_freeze: bool = True, probe_out: Path | None = None) -> None:
        self.port, self.ops_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ops_url = f"http://127.0.0.1:{self.ops_port}"
        env = dict(os.environ)
        env.update({
            "AzureAd__Instance": emulator.url + "/",
            "AzureAd__TenantId": demo.TENANT_ID,
            "AzureAd__ClientId": demo.BLUEPRINT_APP_ID,
            "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
            "AzureAd__ClientCredentials__0__ClientSecret": demo.BLUEPRINT_SECRET,
            "DownstreamApis__graph__Scopes__0": f"{demo.GRAPH_RESOURCE}/.default",
            "DownstreamApis__demo__Scopes__0": f"{demo.DEMO_API_RESOURCE}/.default",
            "Broker__Listen": f"127.0.0.1:{self.port}",
            "Broker__OpsListen": f"127.0.0.1:{self.ops_port}",
            "Logging__LogLevel__Default": "Warning",
            "REQUESTS_CA_BUNDLE": str(emulator.ca_path),
        })
        env.update(extra or {})
        self.probe_out = probe_out
        if probe_out is not None:  # serve with loadtests.probe inside (samples; memory breakdown on SIGUSR1)
            env["PROBE_OUT"] = str(probe_out)
            cmd = [sys.executable, "-m", "loadtests.probe"]
        elif not gc_freeze:  # the A/B run of the gc.freeze() measurement: the same broker without it
            cmd = [sys.executable, "-c", "import gc; gc.freeze = lambda: None; "
                   "from agent_token_broker.cli import main; main(['serve'])"]
        elif profile_out is None:
            cmd = [sys.executable, "-m", "agent_token_broker.cli", "serve"]
        else:  # cProfile writes its stats when serve returns (SIGTERM = graceful stop)
            code = ("import cProfile,sys; from agent_token_broker.cli import main; "
                    f"cProfile.run('main([\"serve\"])', {str(profile_out)!r})")
            cmd = [sys.executable, "-c", code]
        self._log = open(log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_http(self.ops_url + "/readyz", proc=self.proc)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, int]:
        return proc_stats(self.proc.pid)

    def samples(self) -> list[dict[str, Any]]:
        """The probe's samples so far (``probe_out``): tasks, threads, RSS, fds, cache entries."""
        if self.probe_out is None or not self.probe_out.exists():
            return []
        return [json.loads(line) for line in self.probe_out.read_text().splitlines() if line.strip()]

    def memory(self, timeout: float = 600.0) -> dict[str, Any]:
        """The probe's memory breakdown (SIGUSR1; waits for the file, bounded)."""
        assert self.probe_out is not None, "memory() needs a broker started with probe_out"
        target = Path(str(self.probe_out) + ".memory.json")
        target.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not target.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the probe wrote no memory breakdown")
            time.sleep(0.2)
        result: dict[str, Any] = json.loads(target.read_text())
        return result

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class Baseline:
    """A bare aiohttp + uvloop server (``loadtests.baseline_app``) serving ``body``: ``kind`` ``app``
    (``web.Application``) or ``server`` (the low-level ``web.Server``)."""

    def __init__(self, body_file: Path, log_path: Path, kind: str = "app") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.baseline_app", "--port", str(self.port), "--body-file", str(body_file),
             "--kind", kind],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_http(self.url + "/healthz", proc=self.proc)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            root {prefix}/www;
            default_type application/json;
            add_header Cache-Control no-store;
            try_files /body.json =404;
        }}
    }}
}}
"""


class Nginx:
    """nginx, one worker, foreground, temp prefix; every path returns the body file."""

    def __init__(self, body: bytes, workdir: Path) -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise FileNotFoundError("nginx not found (Debian package 'nginx')")
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
        (self.prefix / "www").mkdir()
        (self.prefix / "tmp").mkdir()
        (self.prefix / "www" / "body.json").write_bytes(body)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.prefix, port=self.port))
        self._log = open(self.prefix / "stdout.log", "ab")
        self.proc = subprocess.Popen([binary, "-p", str(self.prefix), "-c", str(conf)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_http(self.url + "/x", proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def token_body(broker_url: str, path: str) -> bytes:
    """The broker's exact response body for ``path`` (baselines serve the same bytes)."""
    with urllib.request.urlopen(broker_url + path, timeout=30) as resp:
        body: bytes = resp.read()
    json.loads(body)
    return body
