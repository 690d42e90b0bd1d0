"""``agent-token-broker serve`` with a probe: what a benchmark needs to see inside the broker.

    python -m loadtests.probe           # configured from the environment, exactly as ``serve``

The broker is the real one (``server.serve_forever``, same settings, listeners, uvloop and
signals); the probe only adds, inside its process:

* every ``PROBE_INTERVAL`` seconds (default 5) one JSON line to ``PROBE_OUT``: asyncio tasks,
  threads, RSS, open fds, cache entries, GC counts (the soak's flatness figures);
* on ``SIGUSR1``: the memory breakdown per structure (:func:`loadtests.memory.breakdown`), and
  with ``PROBE_TRACEMALLOC=1`` (tracemalloc started before the broker) the top allocation
  sites, written to ``PROBE_OUT + ".memory.json"`` (the harness waits for the file).

A benchmark tool, not part of the broker: it reaches into private attributes to measure them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from agent_token_broker.logs import setup_logging
from agent_token_broker.server import RunningBroker, run, serve_forever
from agent_token_broker.settings import ConfigError, load_settings
from loadtests import memory


class GcTimer:
    """Time spent in the cyclic garbage collector, per generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        spent = time.perf_counter() - self._started
        gen = info.get("generation", 2)
        self.seconds[gen] += spent
        self.longest[gen] = max(self.longest[gen], spent)


GC = GcTimer()


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sample(broker: RunningBroker, t0: float) -> dict[str, Any]:
    return {
        "t": round(time.monotonic() - t0, 2),
        "at": round(time.time(), 2),
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "rss_kib": _rss_kib(),
        "cpu_s": round(time.process_time(), 2),
        "fds": len(os.listdir("/proc/self/fd")),
        "cache_entries": len(broker.runtime.cache),
        "gc_counts": list(gc.get_count()),
        "gc_collections": [g["collections"] for g in gc.get_stats()],
        "gc_seconds": [round(x, 3) for x in GC.seconds],
        "gc_longest_ms": [round(1000 * x, 1) for x in GC.longest],
    }


def top_allocations(limit: int = 30) -> dict[str, Any]:
    """tracemalloc's allocation sites, by line and by file (sizes in bytes)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
         tracemalloc.Filter(False, "<unknown>"))
    )

    def rows(key: str) -> list[dict[str, Any]]:
        return [{"where": str(s.traceback[0]) if key == "lineno" else s.traceback[0].filename,
                 "bytes": s.size, "blocks": s.count} for s in snapshot.statistics(key)[:limit]]

    total = sum(s.size for s in snapshot.statistics("filename"))
    return {"total_bytes": total, "by_line": rows("lineno"), "by_file": rows("filename")}


class Probe:
    def __init__(self, out: Path, interval: float) -> None:
        self.out = out
        self.interval = interval
        self.t0 = time.monotonic()
        self.broker: RunningBroker | None = None
        self.task: asyncio.Task[None] | None = None

    def started(self, broker: RunningBroker) -> None:
        self.broker = broker
        self.task = asyncio.get_running_loop().create_task(self.sampler(), name="probe-sampler")
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.dump)

    async def sampler(self) -> None:
        assert self.broker is not None
        with self.out.open("a", encoding="utf-8") as fh:
            while True:
                fh.write(json.dumps(sample(self.broker, self.t0)) + "\n")
                fh.flush()
                await asyncio.sleep(self.interval)

    def dump(self) -> None:
        assert self.broker is not None
        started = time.perf_counter()
        result: dict[str, Any] = {"rss_kib": _rss_kib(), **memory.breakdown(self.broker)}
        if tracemalloc.is_tracing():
            result["tracemalloc"] = top_allocations()
        result["seconds"] = round(time.perf_counter() - started, 2)
        target = Path(str(self.out) + ".memory.json")
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(target)  # the harness waits for the complete file


def main() -> int:
    if os.environ.get("PROBE_TRACEMALLOC"):
        tracemalloc.start(int(os.environ.get("PROBE_TRACEMALLOC_FRAMES", "1")))
    try:
        settings = load_settings(env=dict(os.environ))
    except ConfigError as err:
        print(f"probe: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    probe = Probe(Path(os.environ.get("PROBE_OUT", "probe.jsonl")), float(os.environ.get("PROBE_INTERVAL", "5")))
    run(serve_forever(settings, started=probe.started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
