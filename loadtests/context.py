"""What every scenario shares: options, a scratch directory, and helpers to start processes and measure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from loadtests import procs
from loadtests.report import spread
from loadtests.wrk import WrkResult, run_wrk, write_requests

UNAUTH = "/AuthorizationHeaderUnauthenticated"


def agent_path(agent: str, api: str = "graph") -> str:
    return f"{UNAUTH}/{api}?AgentIdentity={agent}"


HOT_PATH = agent_path(demo.AGENT_1_ID)

# The broker's abuse limits (Broker__Limits__*) rate-limit cache misses (50/s, burst 100; 10/s per agent)
# and cap concurrent requests per caller (64): warming thousands of keys and a 1,000-client stampede
# need them out of the way. Cache hits are never rate-limited, so hit figures do not depend on this.
BENCH_LIMITS = {
    "Broker__Limits__CacheMissesPerSecond": "1000000",
    "Broker__Limits__CacheMissBurst": "1000000",
    "Broker__Limits__CacheMissesPerSecondPerAgent": "1000000",
    "Broker__Limits__CacheMissBurstPerAgent": "1000000",
    "Broker__Limits__MaxConcurrentRequests": "100000",
    "Broker__Limits__MaxConcurrentRequestsPerCaller": "100000",
}


@dataclass
class Options:
    duration: float | None = None  # overrides each scenario's own duration
    connections: int = 32
    rounds: int = 3
    smoke: bool = False
    identities: tuple[int, ...] = (1, 1000, 100_000)
    spread_keys: int = 10_000
    stampede_clients: int = 1000
    warm_budget: float = 300.0  # max seconds spent warming any one scenario's keys
    outage_duration: float | None = None
    soak_duration: float | None = None

    def dur(self, default: float) -> float:
        return self.duration if self.duration is not None else default


@dataclass
class Ctx:
    opts: Options
    workdir: Path
    started: list[Any] = field(default_factory=list)

    def emulator(self, n_agents: int = 2) -> tuple[EmulatorServer, EmulatorAdmin]:
        state = self.workdir / f"emulator-{len(self.started)}"
        server = procs.start_emulator(state, n_agents)
        self.started.append(server)
        return server, EmulatorAdmin(server.url, server.ca_path, timeout=30)

    def broker(self, emulator: EmulatorServer, extra: Mapping[str, str] | None = None,
               profile_out: Path | None = None, *, default_limits: bool = False) -> procs.Broker:
        env = {} if default_limits else dict(BENCH_LIMITS)
        env.update(extra or {})
        b = procs.Broker(emulator, self.workdir / "broker.log", env, profile_out)
        self.started.append(b)
        return b

    def baseline(self, body: bytes) -> procs.Baseline:
        body_file = self.workdir / f"body-{len(self.started)}.json"
        body_file.write_bytes(body)
        b = procs.Baseline(body_file, self.workdir / "baseline.log")
        self.started.append(b)
        return b

    def nginx(self, body: bytes) -> procs.Nginx:
        n = procs.Nginx(body, self.workdir)
        self.started.append(n)
        return n

    def requests_file(self, name: str, lines: Sequence[tuple[str, dict[str, str]]]) -> Path:
        return write_requests(self.workdir / f"{name}.txt", lines)

    def wrk(self, url: str, requests_file: Path, duration: float, *, connections: int | None = None,
            delay_ms: float | None = None) -> WrkResult:
        return run_wrk(url, requests_file, duration=duration,
                       connections=connections or self.opts.connections, delay_ms=delay_ms)

    def stop_all(self) -> None:
        for thing in reversed(self.started):
            with contextlib.suppress(Exception):
                thing.stop()
        self.started.clear()


def interleave(ctx: Ctx, targets: Mapping[str, tuple[str, Path]], duration: float,
               rounds: int) -> dict[str, list[WrkResult]]:
    """``rounds`` rounds of one wrk run per target, in order (A, B, C, A, B, C, ...)."""
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, reqs) in targets.items():
            runs[name].append(ctx.wrk(url, reqs, duration))
    return runs


def ratios(runs: Mapping[str, list[WrkResult]], num: str, den: str) -> list[float]:
    """Per-round throughput ratio ``num / den`` (same round = measured back to back)."""
    return [a.rps / b.rps for a, b in zip(runs[num], runs[den], strict=True) if b.rps]


def summarize(runs: Mapping[str, list[WrkResult]]) -> list[dict[str, Any]]:
    rows = []
    for name, results in runs.items():
        rps = spread([r.rps for r in results])
        p50 = spread([r.latency_us["p50"] for r in results])
        p99 = spread([r.latency_us["p99"] for r in results])
        rows.append({"target": name, "req/s median": rps["median"], "req/s min-max": f"{rps['min']:.0f}-{rps['max']:.0f}",
                     "p50 µs": p50["median"], "p99 µs": p99["median"],
                     "errors": sum(r.failed for r in results), "rounds": len(results)})
    return rows


def raw(runs: Mapping[str, list[WrkResult]]) -> dict[str, list[dict[str, Any]]]:
    return {name: [r.as_dict() for r in results] for name, results in runs.items()}


@contextlib.contextmanager
def scenario(ctx: Ctx) -> Iterator[Ctx]:
    try:
        yield ctx
    finally:
        ctx.stop_all()
