"""Drive load with wrk (keep-alive, fixed connections, fixed duration) and parse its JSON summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA = Path(__file__).resolve().parent / "lua" / "requests.lua"


def ensure_tool(binary: str, package: str) -> str:
    """Path of ``binary``; installs the Debian ``package`` when missing and running as root."""
    found = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if Path(p).exists()), None
    )
    if found:
        return found
    if os.geteuid() != 0:
        raise FileNotFoundError(f"{binary} not found; install the Debian package '{package}' (apt-get install -y {package})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, timeout=600)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, timeout=600, check=True)
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if not found:
        raise FileNotFoundError(f"{binary} still missing after apt-get install {package}")
    return found


def write_requests(path: Path, lines: Iterable[tuple[str, dict[str, str]]]) -> Path:
    """One request per line: ``PATH<TAB>Header: value...`` (the Lua script's format)."""
    with path.open("w", encoding="ascii") as fh:
        for url_path, headers in lines:
            fields = [url_path] + [f"{k}: {v}" for k, v in headers.items()]
            fh.write("\t".join(fields) + "\n")
    return path


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    connections: int
    cpu_seconds: float | None = None  # the server process's CPU time during the run, when measured

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3), "rps": round(self.rps, 1),
                "errors": self.errors, "latency_us": self.latency_us, "connections": self.connections,
                "cpu_seconds": self.cpu_seconds}

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.cpu_seconds is None or not self.requests:
            return None
        return self.cpu_seconds * 1e6 / self.requests


def run_wrk(url: str, requests_file: Path, *, duration: float, connections: int, threads: int = 1,
            delay_ms: float | None = None, timeout_s: float = 5.0) -> WrkResult:
    """One wrk run against ``url`` cycling through ``requests_file``; bounded by duration + 30 s."""
    binary = ensure_tool("wrk", "wrk")
    cmd = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
           "--timeout", f"{timeout_s:g}s", "-s", str(LUA), url, "--", str(requests_file)]
    if delay_ms is not None:
        cmd.append(f"{delay_ms:g}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON "):])
            return WrkResult(data["requests"], data["duration_us"] / 1e6, data["errors"],
                             data["latency_us"], connections)
    raise RuntimeError(f"wrk gave no summary (exit {done.returncode}): {done.stderr.strip()[:300]}")
