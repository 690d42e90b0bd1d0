"""Profile the broker's hot-hit path while wrk drives one hot key.

Usage: ``python -m loadtests.profile_hot [--tool py-spy|cprofile] [--duration S] [--top N]``

* ``py-spy`` (default; ``pip install py-spy``): samples the real broker process from outside
  (``py-spy record --format raw``; no instrumentation overhead, so the shares are the real
  ones) and prints the top frames by own time and by total time (share of samples).
* ``cprofile``: cProfile inside the broker (slower; exact call counts).
"""

from __future__ import annotations

import argparse
import io
import pstats
import shutil
import tempfile
from pathlib import Path

from loadtests import procs, pyspy
from loadtests.clients import warm
from loadtests.context import HOT_PATH, Ctx, Options, agent_path
from loadtests.scenarios_flows import mixed_requests


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tool", choices=("py-spy", "cprofile"), default="py-spy")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--save", type=Path, help="keep the raw profile here")
    p.add_argument("--requests", choices=("hot", "mixed", "spread"), default="hot",
                   help="one hot key (default), the mixed scenario's requests (incl. OBO), or --keys keys")
    p.add_argument("--keys", type=int, default=2000, help="keys (agent identities) for --requests spread")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(Options(connections=args.connections), Path(tmp))
        out = Path(tmp) / ("broker.prof" if args.tool == "cprofile" else "broker.collapsed")
        try:
            emu, admin = ctx.emulator(args.keys if args.requests == "spread" else 2)
            broker = ctx.broker(emu, profile_out=out if args.tool == "cprofile" else None)
            if args.requests == "spread":
                lines: list[tuple[str, dict[str, str]]] = [(agent_path(a), {}) for a in procs.agent_ids(args.keys)]
            else:
                lines = [(HOT_PATH, {})] if args.requests == "hot" else mixed_requests(admin)
            warm(broker.url, lines, concurrency=4)
            reqs = ctx.requests_file("requests", lines)
            ctx.wrk(broker.url, reqs, 2.0)  # warm
            spy = None
            if args.tool == "py-spy":
                spy = pyspy.record(broker.pid, out, rate=500, max_seconds=round(args.duration))
            res = ctx.wrk(broker.url, reqs, args.duration + (1.0 if spy else 0.0), pid=broker.pid)
            if spy is not None:
                _, err = spy.communicate(timeout=args.duration + 30)
                if spy.returncode != 0:
                    raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
            broker.stop()
        finally:
            ctx.stop_all()
        cpu = f", {res.cpu_us_per_request:.1f} µs CPU per request" if res.cpu_us_per_request else ""
        print(f"{res.requests} requests, {res.rps:.0f} req/s under {args.tool}{cpu}")
        if args.save:
            shutil.copy(out, args.save)
        if args.tool == "py-spy":
            print(pyspy.collapsed_top(out, args.top))
            return
        buf = io.StringIO()
        stats = pstats.Stats(str(out), stream=buf)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(buf.getvalue())


if __name__ == "__main__":
    main()
