"""Paced load at a fixed request rate with h2load (Debian ``nghttp2-client``), latency percentiles from its log.

``h2load --h1 -c C --rps R/C -D S --log-file F URL``: C keep-alive HTTP/1.1 clients, each sending
R/C requests per second on its own clock whatever the answers do (a request that comes due while
the previous one is still out is sent as soon as that one ends: one request in flight per
connection, as wrk and real clients do). h2load's log has one line per request (start µs, status,
µs to the end of the response); percentiles are computed from every line.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.wrk import ensure_tool


@dataclass
class PacedResult:
    rate: float  # requested req/s
    requests: int
    seconds: float
    statuses: dict[int, int]
    failed: int
    latency_us: dict[str, float]
    cpu_seconds: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "requests": self.requests, "seconds": round(self.seconds, 3),
                "rps": round(self.rps, 1), "statuses": {str(k): v for k, v in self.statuses.items()},
                "failed": self.failed, "latency_us": self.latency_us, "cpu_seconds": self.cpu_seconds}


def _percentile(ordered: list[int], q: float) -> float:
    if not ordered:
        return 0.0
    return float(ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))])


def run_paced(url: str, *, rate: float, duration: float, connections: int = 32,
              warm_up: float = 1.0) -> PacedResult:
    """``rate`` requests per second in total over ``connections`` for ``duration`` seconds."""
    binary = ensure_tool("h2load", "nghttp2-client")
    seconds = max(1, round(duration))
    per_client = rate / connections
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        log = Path(tmp) / "requests.log"
        cmd = [binary, "--h1", "-c", str(connections), "-t", "1", "--rps", f"{per_client:g}",
               "-D", f"{seconds}", "--warm-up-time", f"{max(1, round(warm_up))}", "--log-file", str(log), url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warm_up + 30)
        if done.returncode != 0 or not log.exists():
            raise RuntimeError(f"h2load failed (exit {done.returncode}): {(done.stdout + done.stderr)[-400:]}")
        starts: list[int] = []
        latencies: list[int] = []
        statuses: dict[int, int] = {}
        for line in log.read_text().splitlines():
            cols = line.split("\t")
            if len(cols) < 3:
                continue
            start, status, took = int(cols[0]), int(cols[1]), int(cols[2])
            starts.append(start)
            latencies.append(took)
            statuses[status] = statuses.get(status, 0) + 1
    latencies.sort()
    span = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else float(seconds)
    failed = sum(n for s, n in statuses.items() if s != 200) + _errored(done.stdout)
    lat = {"min": float(latencies[0]) if latencies else 0.0,
           "mean": round(statistics.fmean(latencies), 1) if latencies else 0.0,
           "p50": _percentile(latencies, 50), "p90": _percentile(latencies, 90),
           "p99": _percentile(latencies, 99), "p999": _percentile(latencies, 99.9),
           "max": float(latencies[-1]) if latencies else 0.0}
    return PacedResult(rate, len(latencies), span or float(seconds), statuses, failed, lat)


def _errored(stdout: str) -> int:
    """h2load's count of requests that errored or timed out (its 'requests:' summary line)."""
    for line in stdout.splitlines():
        if line.startswith("requests:"):
            parts = line.replace(",", "").split()
            try:
                return int(parts[parts.index("errored") - 1]) + int(parts[parts.index("timeout") - 1])
            except (ValueError, IndexError):
                return 0
    return 0
