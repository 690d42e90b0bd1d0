"""Flow scenarios: mixed flows, cold stampede, Entra outage."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from loadtests import procs
from loadtests.clients import stampede as run_stampede
from loadtests.clients import warm
from loadtests.context import UNAUTH, Ctx, agent_path, interleave, ratios, raw, scenario, summarize
from loadtests.report import goal, spread
from loadtests.wrk import WrkResult

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID


def mixed_requests(admin: EmulatorAdmin, users: int = 20) -> list[tuple[str, dict[str, str]]]:
    """~50% autonomous, ~30% agent OBO (distinct inbound user tokens), ~20% agent user."""
    autonomous = [(agent_path(a, api), {}) for a in (A1, A2) for api in ("graph", "demo")]
    obo = [(f"/AuthorizationHeader/graph?AgentIdentity={A1}",
            {"Authorization": "Bearer " + admin.user_token(demo.DEMO_USER_UPN)}) for _ in range(users)]
    agent_user = [(f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}", {}),
                  (f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUserId={demo.AGENT_USER_OID}", {})]
    lines: list[tuple[str, dict[str, str]]] = []
    for i in range(100):
        if i % 10 < 5:
            lines.append(autonomous[i % len(autonomous)])
        elif i % 10 < 8:
            lines.append(obo[i % len(obo)])
        else:
            lines.append(agent_user[i % len(agent_user)])
    return lines


def mixed(ctx: Ctx) -> dict[str, Any]:
    o = ctx.opts
    duration = o.dur(10.0)
    with scenario(ctx):
        emu, admin = ctx.emulator()
        broker = ctx.broker(emu)
        lines = mixed_requests(admin)
        w = warm(broker.url, lines, concurrency=4, max_seconds=o.warm_budget)
        body = procs.token_body(broker.url, lines[0][0])
        base = ctx.baseline(body)
        reqs = ctx.requests_file("mixed", lines)
        runs = interleave(ctx, {"aiohttp": (base.url, reqs), "broker mixed": (broker.url, reqs)}, duration, o.rounds,
                          {"aiohttp": base.pid, "broker mixed": broker.pid})
    r = spread(ratios(runs, "broker mixed", "aiohttp"))
    errors = sum(x.failed for x in runs["broker mixed"])
    return {
        "scenario": "mixed",
        "description": "Mixed cached flows: 50% autonomous (2 agents x 2 APIs), 30% agent OBO (20 distinct inbound "
                       "user tokens, each validated per request), 20% agent user (UPN and OID).",
        "table": summarize(runs),
        "ratios": {"mixed_vs_aiohttp": r}, "warm": w.as_dict(),
        "goals": [goal("errors under mixed load", "0", errors, errors == 0),
                  goal("mixed flows (incl. OBO) vs bare aiohttp web.Application", ">= 0.8x",
                       f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]", r["median"] >= 0.8 if r["n"] else None,
                       ">= 0.6x", r["median"] >= 0.6 if r["n"] else None)],
        "notes": [f"mixed throughput vs bare aiohttp: {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}] "
                  "(OBO hits verify the inbound JWT signature on every request)."],
        "raw": raw(runs),
    }


def stampede(ctx: Ctx) -> dict[str, Any]:
    o = ctx.opts
    clients = o.stampede_clients
    with scenario(ctx):
        emu, admin = ctx.emulator()
        broker = ctx.broker(emu)
        since = admin.log()["last_seq"]
        result = run_stampede(broker.url, agent_path(A2), clients=clients)
        log = admin.log(since)["requests"]
        broker.stop()
        # the same burst with the broker's default abuse limits (Broker__Limits__*), on the other agent
        limited = ctx.broker(emu, default_limits=True)
        result_default = run_stampede(limited.url, agent_path(A1), clients=clients)
    legs: dict[str, int] = {}
    for entry in log:
        if entry["endpoint"] == "token" or entry.get("leg"):
            legs[entry["leg"]] = legs.get(entry["leg"], 0) + 1
    one_each = bool(legs) and all(v == 1 for v in legs.values())
    return {
        "scenario": "stampede",
        "description": f"{clients} connections opened first, then one GET each at the same moment for a cold key "
                       "(agent 2, graph: T1 and agent token both cold).",
        "table": [{"clients": clients, "200": result.ok, **{f"ms {k}": v for k, v in result.latency_ms.items()},
                   "wall s": round(result.wall_seconds, 3), "upstream by leg": legs}],
        "stampede": result.as_dict(), "upstream_by_leg": legs, "stampede_default_limits": result_default.as_dict(),
        "goals": [goal("upstream requests per leg", "exactly 1", legs, one_each),
                  goal("all requests answered 200", str(clients), result.ok, result.ok == clients)],
        "notes": ["latencies are measured by one Python client process (asyncio); they include its own scheduling.",
                  "measured with Broker__Limits__* relaxed (see context.BENCH_LIMITS). With the default limits the "
                  f"same burst got statuses {result_default.statuses}."],
    }


def _wrk_in_thread(ctx: Ctx, url: str, reqs: Path, duration: float) -> tuple[threading.Thread, list[WrkResult]]:
    out: list[WrkResult] = []
    thread = threading.Thread(target=lambda: out.append(ctx.wrk(url, reqs, duration)), daemon=True)
    thread.start()
    return thread, out


def outage(ctx: Ctx) -> dict[str, Any]:
    o = ctx.opts
    duration = o.outage_duration or o.dur(60.0)
    down = duration / 2
    with scenario(ctx):
        emu, admin = ctx.emulator()
        broker = ctx.broker(emu)
        lines = [(agent_path(a, api), {}) for a in (A1, A2) for api in ("graph", "demo")]
        w = warm(broker.url, lines, concurrency=2)
        reqs = ctx.requests_file("outage", lines)
        since = admin.log()["last_seq"]
        thread, out = _wrk_in_thread(ctx, broker.url, reqs, duration)
        time.sleep(duration / 4)
        admin.fault(target="all", mode="outage")
        time.sleep(down)
        admin.clear_faults()
        thread.join(duration + 60)
        upstream = admin.log(since)["requests"]
    res = out[0]
    return {
        "scenario": "outage",
        "description": f"Cached autonomous hits for {duration:g} s; the emulator drops every connection "
                       f"(fault mode 'outage', target 'all') for {down:g} s in the middle.",
        "table": [{"requests": res.requests, "req/s": round(res.rps, 1), "errors": res.failed,
                   "p50 µs": res.latency_us["p50"], "p99 µs": res.latency_us["p99"],
                   "upstream calls during run": len(upstream)}],
        "warm": w.as_dict(), "wrk": res.as_dict(),
        "goals": [goal("failed requests while tokens are cached", "0", res.failed, res.failed == 0)],
        "notes": ["tokens live ~1 h in the emulator, so no refresh is due during the run; "
                  "see tests/integration for refresh-during-outage behaviour."],
    }
