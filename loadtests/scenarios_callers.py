"""The cost of knowing the caller (issue 20): hot hits on one key through a broker with callers
configured (every request checked against its uid's entry, RequireMatch on, the audit trail
aggregating hits to a file) vs the same broker without callers and without the audit trail,
interleaved rounds in one run; then the same pair with a new connection per request
(``Connection: close``), where each request pays the per-connection caller lookup."""

from __future__ import annotations

import os
from typing import Any

from loadtests import procs
from loadtests.context import HOT_PATH, Ctx, interleave, ratios, raw, scenario, summarize
from loadtests.report import goal, spread

GOAL = 0.97  # at most 3 % fewer hot hits per second


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
        runs = interleave(ctx, {"without callers": (plain.url, keep), "with callers": (known.url, keep)},
                          duration, o.rounds)  # fmt: skip
        fresh = interleave(ctx, {"without callers, new connection each": (plain.url, close),
                                 "with callers, new connection each": (known.url, close)},
                           duration, o.rounds)  # fmt: skip
    kept = spread(ratios(runs, "with callers", "without callers"))
    per_conn = spread(ratios(fresh, "with callers, new connection each", "without callers, new connection each"))
    return {
        "scenario": "callers",
        "description": f"Hot hits on one key ({HOT_PATH.split('?')[0]}); with callers: Broker__Callers (uid {uid} "
                       "allowed this agent and API, RequireMatch) and the audit trail aggregating hits to a file; "
                       f"without: no callers, Broker__Audit__Enabled=false. wrk -t1 -c{o.connections} -d{duration:g}s, "
                       f"{o.rounds} interleaved rounds; then the same with 'Connection: close' on every request.",
        "table": summarize(runs) + summarize(fresh),
        "ratios": {"with_vs_without_keepalive": kept, "with_vs_without_new_connection_each": per_conn},
        "goals": [
            goal("hot hits with callers + audit vs without (keep-alive)", f">= {GOAL}x",
                 f"{kept['median']:.3f}x [{kept['min']:.3f}-{kept['max']:.3f}]", kept["median"] >= GOAL),
        ],
        "notes": [
            f"a new connection per request (caller looked up by netlink sock_diag each time): "
            f"{per_conn['median']:.3f}x [{per_conn['min']:.3f}-{per_conn['max']:.3f}]",
        ],
        "raw": {**raw(runs), **raw(fresh)},
    }
