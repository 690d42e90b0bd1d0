"""Scale scenarios: warming N agent identities (issue 17 item 1) and where the memory goes (item 2).

The emulator runs as its own process (:mod:`loadtests.emuproc`) and the broker is ``serve`` with
the probe inside (:mod:`loadtests.probe`): the same broker, plus samples of its tasks and threads
and a memory breakdown per structure on demand.
"""

from __future__ import annotations

import time
from typing import Any

from loadtests import procs
from loadtests.clients import warm as warm_paths
from loadtests.context import Ctx, agent_path, scenario
from loadtests.emuproc import Emulator, cpu_seconds
from loadtests.report import goal

# Acquisitions a warm-up runs at once: requests in flight from the client, and the broker's MSAL
# thread pool (Broker__Upstream__MaxConcurrency). Both processes share 2 cores with the emulator;
# fewer MSAL threads contend less for the GIL (see loadtests/README.md, "Warming many identities").
WARM_CONCURRENCY = 32
WARM_UPSTREAM_THREADS = 8


def scale_env(identities: int) -> dict[str, str]:
    """What a broker holding ``identities`` needs configured: room for 2 tokens per identity
    (T1 + app token) in the cache. The miss limits are the harness's (``BENCH_LIMITS``)."""
    return {
        "Broker__Cache__MaxEntries": str(max(50_000, 2 * identities + 1_000)),
        "Broker__Upstream__MaxConcurrency": str(WARM_UPSTREAM_THREADS),
    }


def per_token_table(mem: dict[str, Any], identities: int) -> list[dict[str, Any]]:
    """The breakdown per cached token and per identity (bytes of Python objects)."""
    tokens = max(1, mem["tokens_held"])
    rows = []
    for s in mem["structures"]:
        if s.get("missing"):
            rows.append({"structure": s["structure"], "bytes per token": "n/a", "bytes per identity": "n/a",
                         "objects": "n/a", "MiB": "n/a"})
            continue
        rows.append({"structure": s["structure"], "bytes per token": round(s["bytes"] / tokens),
                     "bytes per identity": round(s["bytes"] / max(1, identities)), "objects": s["objects"],
                     "MiB": round(s["bytes"] / 2**20, 1)})
    return rows


def warm(ctx: Ctx) -> dict[str, Any]:
    """Warm N identities (``--identities``, the largest) through one broker; time, CPU, upstream
    calls and memory per identity."""
    o = ctx.opts
    n = max(o.identities)
    with scenario(ctx):
        emu = Emulator(ctx.workdir, n)
        ctx.started.append(emu)
        admin = emu.admin()
        env = scale_env(n)
        if o.tracemalloc:
            env["PROBE_TRACEMALLOC"] = "1"
        broker = ctx.broker(emu, env, probe_out=ctx.workdir / "probe.jsonl")
        before = admin.counts()
        rss0 = broker.stats()["rss_kib"]
        cpu_b0, cpu_e0, load0 = cpu_seconds(broker.pid), emu.cpu(), _load()
        paths = [(agent_path(a), {}) for a in procs.agent_ids(n)]
        w = warm_paths(broker.url, paths, concurrency=WARM_CONCURRENCY, max_seconds=o.warm_budget)
        cpu_b, cpu_e, load1 = cpu_seconds(broker.pid) - cpu_b0, emu.cpu() - cpu_e0, _load()
        after = admin.counts()
        stats = broker.stats()
        time.sleep(1.0)  # let the probe take a sample after the warm-up
        mem = broker.memory()
        samples = broker.samples()
    upstream = {leg: after.get(leg, 0) - before.get(leg, 0) for leg in ("t1", "app")}
    ok = w.ok
    rate = ok / w.seconds if w.seconds else 0.0
    rss_per_identity = (stats["rss_kib"] - rss0) * 1024 / max(1, ok)
    tokens, chars = mem["tokens_held"], mem["token_chars"]
    python_bytes = sum(s["bytes"] for s in mem["structures"] if not s.get("missing"))
    token_struct = next(s["bytes"] for s in mem["structures"] if s["structure"].startswith("token bytes"))
    beyond_python = (python_bytes - token_struct) / max(1, tokens)
    # RSS per token beyond its bytes: the identity's RSS growth split over its 2 tokens, minus their characters
    rss_beyond = (rss_per_identity * ok - chars) / max(1, tokens)
    one_each = ok > 0 and upstream["t1"] == ok and upstream["app"] == ok
    last = samples[-1] if samples else {}
    notes = [f"identities = agent identities in an emulator tenant of {n} (its own process); each costs a T1 and "
             "an agent app token (2 upstream calls, 2 cache entries).",
             f"{WARM_CONCURRENCY} requests in flight, Broker__Upstream__MaxConcurrency={WARM_UPSTREAM_THREADS}, "
             "miss limits relaxed (BENCH_LIMITS; a default broker admits 50 misses/s: see loadtests/README.md).",
             f"load average before / after: {load0} / {load1} (2 cores shared with other work).",
             "bytes per token are Python object sizes (sys.getsizeof over the objects each structure holds, each "
             "object counted once); RSS per token adds the allocator's rounding and what no structure owns."]
    if ok < n:
        notes.append(f"warm budget ({o.warm_budget:g} s) ran out: {ok} of {n} identities warmed (failed {w.failed}).")
    return {
        "scenario": "warm",
        "description": f"{n} agent identities warmed through one broker (/AuthorizationHeaderUnauthenticated/graph "
                       "per identity), then its memory per structure.",
        "table": [{"identities": ok, "failed": w.failed, "wall s": round(w.seconds, 1), "identities/s": round(rate, 1),
                   "broker CPU ms/identity": round(1000 * cpu_b / max(1, ok), 3),
                   "emulator CPU ms/token": round(1000 * cpu_e / max(1, upstream["t1"] + upstream["app"]), 3),
                   "upstream t1": upstream["t1"], "upstream app": upstream["app"],
                   "RSS MiB": round(stats["rss_kib"] / 1024, 1), "RSS KiB/identity": round(rss_per_identity / 1024, 2),
                   "tasks": last.get("tasks"), "threads": last.get("threads")}],
        "extra_tables": {"memory per structure (Python objects)": per_token_table(mem, ok),
                         **({"tracemalloc: top allocation sites": mem["tracemalloc"]["by_line"][:25]}
                            if "tracemalloc" in mem else {})},
        "memory_raw": mem,
        "warm": w.as_dict(),
        "goals": [
            goal(f"{n} identities warmed", "<= 600 s", f"{w.seconds:.0f} s ({rate:.0f}/s)", ok == n and w.seconds <= 600),
            goal("upstream requests per identity", "1 T1 + 1 app token", upstream, one_each),
            goal("RSS per cached token beyond its bytes", "<= 2 KB (floor 3 KB)",
                 f"{rss_beyond:.0f} B ({rss_per_identity / 1024:.2f} KiB per identity)", rss_beyond <= 2048),
            goal("Python objects per cached token beyond its bytes", "<= 2 KB", f"{beyond_python:.0f} B",
                 beyond_python <= 2048),
        ],
        "notes": notes,
        "samples": samples,
    }


def _load() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]
