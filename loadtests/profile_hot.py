"""Profile the broker's hot-hit path: cProfile in the broker process while wrk drives one hot key.

Usage: python -m loadtests.profile_hot [--duration S] [--top N]; prints the top frames by own time.
"""

from __future__ import annotations

import argparse
import io
import pstats
import tempfile
from pathlib import Path

from loadtests import procs
from loadtests.context import HOT_PATH, Ctx, Options


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(Options(), Path(tmp))
        out = Path(tmp) / "broker.prof"
        try:
            emu, _ = ctx.emulator()
            broker = ctx.broker(emu, profile_out=out)
            procs.token_body(broker.url, HOT_PATH)
            res = ctx.wrk(broker.url, ctx.requests_file("hot", [(HOT_PATH, {})]), args.duration)
            broker.stop()
        finally:
            ctx.stop_all()
        print(f"{res.requests} requests, {res.rps:.0f} req/s under cProfile")
        buf = io.StringIO()
        stats = pstats.Stats(str(out), stream=buf)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(buf.getvalue())


if __name__ == "__main__":
    main()
