"""The cost of knowing the caller (issue 20): hot hits on one key through a broker with callers
configured (every request checked against its uid's entry, RequireMatch on, the audit trail
aggregating hits to a file) vs the same broker without callers and without the audit trail,
interleaved rounds in one run; then the same pair with a new connection per request
(``Connection: close``), where each request pays the per-connection caller lookup."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loadtests import procs
from loadtests.context import HOT_PATH, Ctx, raw, scenario, summarize
from loadtests.report import goal, spread
from loadtests.wrk import WrkResult

GOAL = 0.97  # at most 3 % more broker CPU per hot hit (and at most 3 % fewer hits per second)
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def measure(ctx: Ctx, targets: dict[str, tuple[procs.Broker, Path]], duration: float,
            rounds: int) -> tuple[dict[str, list[WrkResult]], dict[str, list[float]]]:
    """Interleaved rounds (A, B, A, B, ...): wrk results and the broker's CPU µs per request."""
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (broker, reqs) in targets.items():
            before = cpu_seconds(broker.pid)
            result = ctx.wrk(broker.url, reqs, duration)
            used = cpu_seconds(broker.pid) - before
            runs[name].append(result)
            cpu[name].append(1e6 * used / max(1, result.requests))
    return runs, cpu


def _ratios(values: dict[str, list[float]], num: str, den: str) -> list[float]:
    return [a / b for a, b in zip(values[num], values[den], strict=True) if b]


def callers(ctx: Ctx) -> dict[str, Any]:
    o = ctx.opts
    duration = o.dur(10.0)
    agent = HOT_PATH.split("AgentIdentity=")[1]
    uid = str(os.getuid())  # wrk runs as this user: the entry that matches it
    with scenario(ctx):
        emu, _ = ctx.emulator()
        plain = ctx.broker(emu, {"Broker__Audit__Enabled": "false"})
        known = ctx.broker(emu, {
            "Broker__Callers__bench__Uid": uid,
            "Broker__Callers__bench__AllowedAgentIdentities__0": agent,
            "Broker__Callers__bench__AllowedApis__0": "graph",
            "Broker__Callers__sandbox__Uid": "10020",
            "Broker__Callers__RequireMatch": "true",
            "Broker__Audit__File": str(ctx.workdir / "audit.jsonl"),
            "Broker__Audit__Hits": "aggregate",
        })  # fmt: skip
        for b in (plain, known):
            procs.token_body(b.url, HOT_PATH)  # warm the key
        keep = ctx.requests_file("callers-keepalive", [(HOT_PATH, {})])
        close = ctx.requests_file("callers-close", [(HOT_PATH, {"Connection": "close"})])
        runs, cpu = measure(ctx, {"without callers": (plain, keep), "with callers": (known, keep)},
                            duration, o.rounds)  # fmt: skip
        fresh, fresh_cpu = measure(ctx, {"without callers, new connection each": (plain, close),
                                         "with callers, new connection each": (known, close)},
                                   duration, o.rounds)  # fmt: skip
    rps = {name: [r.rps for r in results] for name, results in {**runs, **fresh}.items()}
    # CPU per hit, without / with: >= 0.97 means the callers cost at most 3 % more CPU per hit
    kept = spread(_ratios(cpu, "without callers", "with callers"))
    kept_rps = spread(_ratios(rps, "with callers", "without callers"))
    per_conn = spread(_ratios(fresh_cpu, "without callers, new connection each", "with callers, new connection each"))
    cpu_notes = [f"broker CPU per request, {name}: {spread(values)['median']:.1f} µs (median) "
                 f"[{min(values):.1f}-{max(values):.1f}]" for name, values in {**cpu, **fresh_cpu}.items()]
    return {
        "scenario": "callers",
        "description": f"Hot hits on one key ({HOT_PATH.split('?')[0]}); with callers: Broker__Callers (uid {uid} "
                       "allowed this agent and API, RequireMatch) and the audit trail aggregating hits to a file; "
                       f"without: no callers, Broker__Audit__Enabled=false. wrk -t1 -c{o.connections} -d{duration:g}s, "
                       f"{o.rounds} interleaved rounds; then the same with 'Connection: close' on every request.",
        "table": summarize(runs) + summarize(fresh),
        "ratios": {"cpu_per_hit_without_over_with": kept, "rps_with_over_without": kept_rps,
                   "cpu_per_request_new_connection_each_without_over_with": per_conn},
        "goals": [
            goal("broker CPU per hot hit, without / with callers + audit (keep-alive)", f">= {GOAL}x",
                 f"{kept['median']:.3f}x [{kept['min']:.3f}-{kept['max']:.3f}]", kept["median"] >= GOAL),
        ],
        "notes": [
            f"throughput with / without (keep-alive): {kept_rps['median']:.3f}x [{kept_rps['min']:.3f}-{kept_rps['max']:.3f}] "
            "(noisy on a shared machine: the CPU ratio is the figure)",
            f"a new connection per request (caller looked up by netlink sock_diag each time), CPU per request "
            f"without / with: {per_conn['median']:.3f}x [{per_conn['min']:.3f}-{per_conn['max']:.3f}]",
            *cpu_notes,
            "the gate's own hit path in-process, without the machine's noise: python -m loadtests.gate_bench",
        ],
        "raw": {**raw(runs), **raw(fresh), "cpu_us_per_request": {**cpu, **fresh_cpu}},
    }
