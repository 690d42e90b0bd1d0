"""The benchmark harness: ``python -m loadtests.bench [--scenario NAME|all] [--duration S] [--connections N] [--smoke]``.

Starts the emulator and the broker (``agent-token-broker serve``, uvloop, Warning logs),
warms the cache, drives load with wrk and measures baselines in the same run, then writes
``loadtests/results/<date>-<scenario>.json`` and ``<date>-summary.md``. See README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtests import scenarios_callers, scenarios_flows, scenarios_hot, scenarios_scale
from loadtests.context import Ctx, Options
from loadtests.report import RESULTS, machine_info, write_results
from loadtests.wrk import ensure_tool

Scenario = Callable[[Ctx], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {
    "hot": scenarios_hot.hot,
    "gc_freeze": scenarios_hot.gc_freeze,
    "spread": scenarios_hot.spread_keys,
    "mixed": scenarios_flows.mixed,
    "stampede": scenarios_flows.stampede,
    "scale": scenarios_scale.scale,
    "outage": scenarios_flows.outage,
    "soak": scenarios_scale.soak,
    "callers": scenarios_callers.callers,
    "warm": scenarios_scale.warm,
}
SMOKE = ("hot", "mixed", "stampede", "outage")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"],
                   help="scenario to run (repeatable; default all)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (soak: total; outage: whole run, "
                   "down for its middle half); default per scenario: 10 s, outage 60 s, soak 600 s")
    p.add_argument("--outage-duration", type=float, help="outage run length (default --duration or 60 s)")
    p.add_argument("--soak-duration", type=float, help="soak length (default --duration or 600 s)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison (default 3)")
    p.add_argument("--identities", default="1,1000,100000", help="scale steps (default 1,1000,100000)")
    p.add_argument("--spread-keys", type=int, default=10_000, help="keys for the spread scenario (default 10000)")
    p.add_argument("--stampede-clients", type=int, default=1000, help="concurrent cold requests (default 1000)")
    p.add_argument("--warm-budget", type=float, default=300.0, help="max seconds warming keys per scenario")
    p.add_argument("--tracemalloc", action="store_true", help="warm: trace the broker's allocations (memory table)")
    p.add_argument("--smoke", action="store_true", help="tiny, fast run of a few scenarios (CI; <= 60 s)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default loadtests/results)")
    p.add_argument("--tag", default="", help="added to the result files' names (<date>-<tag>-<scenario>.json)")
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> tuple[Options, list[str]]:
    if args.smoke:
        opts = Options(duration=args.duration or 1.0, connections=min(args.connections, 8), rounds=1, smoke=True,
                       identities=(1, 20), spread_keys=20, stampede_clients=50, warm_budget=20.0)
        names = [s for s in (args.scenario or SMOKE) if s != "all"] or list(SMOKE)
        return opts, names
    opts = Options(duration=args.duration, connections=args.connections, rounds=args.rounds,
                   identities=tuple(int(x) for x in args.identities.split(",") if x.strip()),
                   spread_keys=args.spread_keys, stampede_clients=args.stampede_clients,
                   warm_budget=args.warm_budget, outage_duration=args.outage_duration,
                   soak_duration=args.soak_duration, tracemalloc=args.tracemalloc)
    chosen = args.scenario or ["all"]
    names = list(SCENARIOS) if "all" in chosen else list(dict.fromkeys(chosen))
    return opts, names


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    opts, names = options(args)
    ensure_tool("wrk", "wrk")
    ensure_tool("nginx", "nginx")
    ensure_tool("h2load", "nghttp2-client")
    command = "python -m loadtests.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    stamp = dt.date.today().isoformat() + (f"-{args.tag}" if args.tag else "") + ("-smoke" if opts.smoke else "")
    machine = machine_info()
    results: list[dict[str, Any]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="loadtests-") as tmp:
        for name in names:
            t0 = time.monotonic()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            ctx = Ctx(opts, Path(tmp) / name)
            ctx.workdir.mkdir()
            try:
                result = SCENARIOS[name](ctx)
            except Exception as exc:  # record the failure, keep going with the other scenarios
                failed = True
                result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}", "notes": [f"FAILED: {exc}"]}
                log = ctx.workdir / "broker.log"
                if log.exists():
                    result["broker_log_tail"] = log.read_text(errors="replace")[-2000:]
            result["elapsed_seconds"] = round(time.monotonic() - t0, 1)
            results.append(result)
            print(f"[bench] {name} done in {result['elapsed_seconds']} s", file=sys.stderr, flush=True)
    files, summary = write_results(args.out, stamp, results, machine, command)
    print(summary.read_text())
    print(json.dumps({"results": [str(f) for f in files], "summary": str(summary)}))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
