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
from loadtests.openloop import PacedResult, run_paced
from loadtests.report import spread
from loadtests.wrk import WrkResult, run_wrk, write_requests

UNAUTH = "/AuthorizationHeaderUnauthenticated"


def agent_path(agent: str, api: str = "graph") -> str:
    return f"{UNAUTH}/{api}?AgentIdentity={agent}"


HOT_PATH = agent_path(demo.AGENT_1_ID)

# The fixed request rate of the paced (open-loop) comparison, and its connections (h2load paces every
# connection on its own timer, all started together: each tick sends one request per connection at once,
# so fewer connections means smaller bursts).
PACED_RATE = 2000.0
PACED_CONNECTIONS = 8

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
    tracemalloc: bool = False  # the warm scenario's broker traces allocations (slower; for the memory table)

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

    def broker(self, emulator: EmulatorServer | Any, extra: Mapping[str, str] | None = None,
               profile_out: Path | None = None, *, default_limits: bool = False,
               gc_freeze: bool = True, probe_out: Path | None = None) -> procs.Broker:
        env = {} if default_limits else dict(BENCH_LIMITS)
        env.update(extra or {})
        b = procs.Broker(emulator, self.workdir / "broker.log", env, profile_out, gc_freeze=gc_freeze,
                         probe_out=probe_out)
        self.started.append(b)
        return b

    def baseline(self, body: bytes, kind: str = "app") -> procs.Baseline:
        """A bare aiohttp server serving ``body``: ``app`` (web.Application) or ``server`` (low-level web.Server)."""
        body_file = self.workdir / f"body-{len(self.started)}.json"
        body_file.write_bytes(body)
        b = procs.Baseline(body_file, self.workdir / f"baseline-{kind}.log", kind)
        self.started.append(b)
        return b

    def nginx(self, body: bytes) -> procs.Nginx:
        n = procs.Nginx(body, self.workdir)
        self.started.append(n)
        return n

    def requests_file(self, name: str, lines: Sequence[tuple[str, dict[str, str]]]) -> Path:
        return write_requests(self.workdir / f"{name}.txt", lines)

    def wrk(self, url: str, requests_file: Path, duration: float, *, connections: int | None = None,
            delay_ms: float | None = None, pid: int | None = None) -> WrkResult:
        """One wrk run; with ``pid``, that process's CPU seconds during the run are recorded too."""
        before = procs.cpu_seconds(pid) if pid is not None else None
        result = run_wrk(url, requests_file, duration=duration,
                         connections=connections or self.opts.connections, delay_ms=delay_ms)
        if pid is not None and before is not None:
            result.cpu_seconds = procs.cpu_seconds(pid) - before
        return result

    def paced(self, url: str, duration: float, *, rate: float = PACED_RATE, connections: int = PACED_CONNECTIONS,
              pid: int | None = None) -> PacedResult:
        """h2load at a fixed ``rate`` (see :mod:`loadtests.openloop`); CPU of ``pid`` recorded too."""
        before = procs.cpu_seconds(pid) if pid is not None else None
        result = run_paced(url, rate=rate, duration=duration, connections=connections)
        if pid is not None and before is not None:
            result.cpu_seconds = procs.cpu_seconds(pid) - before
        return result

    def stop_all(self) -> None:
        for thing in reversed(self.started):
            with contextlib.suppress(Exception):
                thing.stop()
        self.started.clear()


def interleave(ctx: Ctx, targets: Mapping[str, tuple[str, Path]], duration: float,
               rounds: int, pids: Mapping[str, int] | None = None) -> dict[str, list[WrkResult]]:
    """``rounds`` rounds of one wrk run per target, in order (A, B, C, A, B, C, ...); the CPU time
    of the processes in ``pids`` (by target name) is recorded with their runs."""
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, reqs) in targets.items():
            runs[name].append(ctx.wrk(url, reqs, duration, pid=(pids or {}).get(name)))
    return runs


def interleave_paced(ctx: Ctx, targets: Mapping[str, tuple[str, int | None]], duration: float,
                     rounds: int) -> dict[str, list[PacedResult]]:
    """Like :func:`interleave`, at the fixed :data:`PACED_RATE` (h2load); targets are (URL with path, pid)."""
    runs: dict[str, list[PacedResult]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, pid) in targets.items():
            runs[name].append(ctx.paced(url, duration, pid=pid))
    return runs


def p99_ratios(runs: Mapping[str, Sequence[WrkResult | PacedResult]], num: str, den: str,
               key: str = "p99") -> list[float]:
    """Per-round latency ratio ``num / den`` of percentile ``key``."""
    return [a.latency_us[key] / b.latency_us[key] for a, b in zip(runs[num], runs[den], strict=True)
            if b.latency_us[key]]


def ratios(runs: Mapping[str, list[WrkResult]], num: str, den: str) -> list[float]:
    """Per-round throughput ratio ``num / den`` (same round = measured back to back)."""
    return [a.rps / b.rps for a, b in zip(runs[num], runs[den], strict=True) if b.rps]


def summarize(runs: Mapping[str, Sequence[WrkResult | PacedResult]]) -> list[dict[str, Any]]:
    rows = []
    for name, results in runs.items():
        rps = spread([r.rps for r in results])
        p50 = spread([r.latency_us["p50"] for r in results])
        p99 = spread([r.latency_us["p99"] for r in results])
        cpu = [c for c in (cpu_us(r) for r in results) if c is not None]
        rows.append({"target": name, "req/s median": rps["median"], "req/s min-max": f"{rps['min']:.0f}-{rps['max']:.0f}",
                     "p50 µs": p50["median"], "p99 µs": p99["median"],
                     "CPU µs/req": spread(cpu)["median"] if cpu else "",
                     "errors": sum(r.failed for r in results), "rounds": len(results)})
    return rows


def cpu_us(result: WrkResult | PacedResult) -> float | None:
    """The server's CPU µs per request during a run (None when not measured)."""
    if result.cpu_seconds is None or not result.requests:
        return None
    return result.cpu_seconds * 1e6 / result.requests


def raw(runs: Mapping[str, Sequence[WrkResult | PacedResult]]) -> dict[str, list[dict[str, Any]]]:
    return {name: [r.as_dict() for r in results] for name, results in runs.items()}


@contextlib.contextmanager
def scenario(ctx: Ctx) -> Iterator[Ctx]:
    try:
        yield ctx
    finally:
        ctx.stop_all()
