"""What knowing the caller costs one cache hit inside the broker: the token gate's hit path timed
in-process (no HTTP, no client), so the figure is the code's own, not the machine's noise.

Two brokers on one emulator: ``plain`` (no callers, ``Broker__Audit__Enabled=false``) and
``callers`` (a ``Broker__Callers`` entry matching the caller, RequireMatch, the audit trail
aggregating hits); the same hot request goes through ``TokenGate.token`` with the connection's
caller context, ``--calls`` times per round, rounds interleaved. Prints µs per hit (median of
rounds) and the ratio.

    python -m loadtests.gate_bench [--calls 20000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from agent_token_broker.api.caller_context import CallerContext
from agent_token_broker.api.gate import TokenGate
from agent_token_broker.api.params import Family, parse_query_string
from agent_token_broker.api.policy import Route
from agent_token_broker.callers import CallerIdentity
from agent_token_broker.server import running
from agent_token_broker.settings import load_settings
from entra_emulator import demo
from loadtests import procs


def _env(emulator_url: str, **extra: str) -> dict[str, str]:
    return {
        "AzureAd__Instance": emulator_url + "/", "AzureAd__TenantId": demo.TENANT_ID,
        "AzureAd__ClientId": demo.BLUEPRINT_APP_ID, "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
        "AzureAd__ClientCredentials__0__ClientSecret": demo.BLUEPRINT_SECRET,
        "DownstreamApis__graph__Scopes__0": f"{demo.GRAPH_RESOURCE}/.default",
        "Broker__Listen": "127.0.0.1:0", "Broker__OpsListen": "off", "Logging__LogLevel__Default": "Warning",
        **extra,
    }  # fmt: skip


async def _round(gate: TokenGate, query: object, caller: CallerContext, calls: int) -> float:
    token = gate.token
    started = time.perf_counter()
    for _ in range(calls):
        await token(Route.HEADER_UNAUTH, "graph", query, caller=caller)  # type: ignore[arg-type]
    return (time.perf_counter() - started) * 1e6 / calls


async def main_async(calls: int, rounds: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    emulator = procs.start_emulator(work / "emulator")
    os.environ["REQUESTS_CA_BUNDLE"] = str(emulator.ca_path)
    agent = demo.AGENT_1_ID
    query = parse_query_string(f"AgentIdentity={agent}", Family.HEADER)
    me = CallerIdentity("tcp", uid=os.getuid(), peer="127.0.0.1:40000", source="sock_diag")
    plain_env = _env(emulator.url, Broker__Audit__Enabled="false")
    callers_env = _env(
        emulator.url, Broker__Callers__bench__Uid=str(os.getuid()),
        Broker__Callers__bench__AllowedAgentIdentities__0=agent, Broker__Callers__bench__AllowedApis__0="graph",
        Broker__Callers__sandbox__Uid="10020", Broker__Callers__RequireMatch="true",
        Broker__Audit__File=str(work / "audit.jsonl"),
    )  # fmt: skip
    try:
        async with running(load_settings(env=plain_env), wait_ready=30) as plain, \
                running(load_settings(env=callers_env), wait_ready=30) as known:  # fmt: skip
            gates = {"plain": TokenGate(plain.runtime), "callers": TokenGate(known.runtime)}
            contexts = {name: CallerContext(me) for name in gates}
            for name, gate in gates.items():  # warm: the miss, then a few hits
                for _ in range(100):
                    await gate.token(Route.HEADER_UNAUTH, "graph", query, caller=contexts[name])
            results: dict[str, list[float]] = {name: [] for name in gates}
            for _ in range(rounds):
                for name, gate in gates.items():
                    results[name].append(await _round(gate, query, contexts[name], calls))
            audit = known.runtime.audit
            assert audit is not None
            hits = sum(audit.pending_hits().values()) + sum(n for (_, kind), n in audit.totals.items() if kind == "hit")
    finally:
        emulator.stop()
    med = {name: statistics.median(values) for name, values in results.items()}
    ratios = [p / c for p, c in zip(results["plain"], results["callers"], strict=True)]
    return {
        "calls_per_round": calls, "rounds": rounds,
        "us_per_hit_median": {k: round(v, 3) for k, v in med.items()},
        "extra_us_per_hit": round(med["callers"] - med["plain"], 3),
        "plain_over_callers_median": round(statistics.median(ratios), 3),
        "plain_over_callers_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        "hits_counted_by_the_audit_window": hits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.calls, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
