"""Micro-benchmark of the token cache hot path and of its memory bound.

Prints µs per ``peek()`` hit at 1, 10k and 100k entries and the ratio 100k/1,
and the RSS growth for 200k inserts into a cache capped at 50k entries.
Bounded iterations; runs in well under 20 s on a 2-core machine. Writes JSON to
``loadtests/results/<date>-cache-hit.json``.

Usage: python loadtests/cache_bench.py [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_token_broker.cache import CachedToken, CachePolicy, TokenCache

TOKEN_CHARS = 1800  # a typical Entra access token (JWT) length
PEEKS_PER_ROUND = 200_000
ROUNDS = 5


def rss_kib() -> int:
    """Current resident set size in KiB (Linux /proc; falls back to ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def make_token(i: int, now: float) -> CachedToken:
    value = f"{i:012d}" + "x" * (TOKEN_CHARS - 12)
    return CachedToken(value, now + 3600.0, now, meta={"token_type": "Bearer"})


async def _never() -> CachedToken:
    raise RuntimeError("benchmark cache must not acquire")


def fill(cache: TokenCache, n: int, now: float) -> None:
    for i in range(n):
        cache.put(("app", "tenant", f"agent-{i}", None, None, ("scope/.default",), None),
                  make_token(i, now), _never, tags=frozenset({f"agent-{i}"}))


def key(i: int) -> tuple[object, ...]:
    return ("app", "tenant", f"agent-{i}", None, None, ("scope/.default",), None)


def bench_peek(size: int, now: float) -> dict[str, float]:
    cache = TokenCache(CachePolicy(max_entries=max(size, 1)), clock=lambda: now)
    fill(cache, size, now)
    rng = random.Random(7)
    sample = [key(rng.randrange(size)) for _ in range(1000)]
    peek = cache.peek
    assert all(peek(k) is not None for k in sample)
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(PEEKS_PER_ROUND // len(sample)):
            for k in sample:
                peek(k)
        best = min(best, time.perf_counter() - t0)
    # Same loop without the cache call, subtracted to isolate peek() itself.
    base = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(PEEKS_PER_ROUND // len(sample)):
            for _k in sample:
                pass
        base = min(base, time.perf_counter() - t0)
    cache.clear()
    return {
        "entries": size,
        "us_per_peek": best / PEEKS_PER_ROUND * 1e6,
        "us_per_peek_minus_loop": (best - base) / PEEKS_PER_ROUND * 1e6,
    }


async def bench_rss(now: float) -> dict[str, float]:
    gc.collect()
    before = rss_kib()
    cache = TokenCache(CachePolicy(max_entries=50_000), clock=lambda: now)
    t0 = time.perf_counter()
    fill(cache, 200_000, now)
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(0)  # let the loop drop the cancelled timers of evicted keys
    gc.collect()
    after = rss_kib()
    assert len(cache) == 50_000
    result = {
        "inserts": 200_000,
        "cap": 50_000,
        "entries": len(cache),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_growth_mib": (after - before) / 1024,
        "bytes_per_entry_incl_token": (after - before) * 1024 / len(cache),
        "token_chars": TOKEN_CHARS,
        "us_per_insert": elapsed / 200_000 * 1e6,
    }
    cache.clear()
    return result


async def main_async(out_dir: Path) -> dict[str, object]:
    now = time.time()
    rss = await bench_rss(now)  # first, so earlier allocations do not blur it
    peeks = [bench_peek(n, now) for n in (1, 10_000, 100_000)]
    ratio = peeks[2]["us_per_peek"] / peeks[0]["us_per_peek"]
    report: dict[str, object] = {
        "benchmark": "cache-hit",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "peek_rounds": ROUNDS,
        "peeks_per_round": PEEKS_PER_ROUND,
        "peek": peeks,
        "ratio_100k_over_1": ratio,
        "rss": rss,
        "note": "best of rounds; load generator and other processes share the CPUs",
    }
    path = out_dir / f"{dt.date.today().isoformat()}-cache-hit.json"
    write_report(path, report)
    for p in peeks:
        print(f"peek hit @ {p['entries']:>7} entries: {p['us_per_peek']:.3f} µs "
              f"({p['us_per_peek_minus_loop']:.3f} µs without loop overhead)")
    print(f"ratio 100k/1: {ratio:.2f}")
    print(f"RSS growth for 200k inserts, cap 50k: {rss['rss_growth_mib']:.1f} MiB "
          f"(~{rss['bytes_per_entry_incl_token']:.0f} B per entry incl. a {TOKEN_CHARS}-char token)")
    print(f"wrote {path}")
    return report


def write_report(path: Path, report: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    asyncio.run(main_async(args.out))


if __name__ == "__main__":
    main()
