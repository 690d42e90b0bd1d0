"""Scale scenarios: warming N agent identities (issue 17 item 1) and where the memory goes (item 2).

The emulator runs as its own process (:mod:`loadtests.emuproc`) and the broker is ``serve`` with
the probe inside (:mod:`loadtests.probe`): the same broker, plus samples of its tasks and threads
and a memory breakdown per structure on demand.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from loadtests import procs
from loadtests.clients import warm as warm_paths
from loadtests.context import Ctx, agent_path, scenario
from loadtests.emuproc import Emulator, cpu_seconds
from loadtests.report import goal, spread

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


# -- soak ------------------------------------------------------------------------------------------

SOAK_IDENTITIES = 2_000
SOAK_LIFETIME = 120  # seconds: every token (T1 and app) refreshed about ten times in ten minutes
SOAK_CONNECTIONS = 16
SOAK_DELAY_MS = 10.0  # per connection: about 1,600 requests/s in all, well under saturation


def _paced_warm(url: str, paths: list[tuple[str, dict[str, str]]], seconds: float, budget: float) -> Any:
    """Warm ``paths`` spread evenly over ``seconds`` (so their refreshes are spread the same way)."""
    from loadtests.clients import WarmResult

    total = WarmResult()
    slices = max(1, min(len(paths), int(seconds)))
    per = -(-len(paths) // slices)
    t0 = time.monotonic()
    for i in range(slices):
        chunk = paths[i * per:(i + 1) * per]
        if not chunk:
            break
        done = warm_paths(url, chunk, concurrency=8, max_seconds=max(1.0, budget - (time.monotonic() - t0)))
        total.ok += done.ok
        total.failed += done.failed
        total.done_paths += done.done_paths
        for status, count in done.statuses.items():
            total.statuses[status] = total.statuses.get(status, 0) + count
        lag = t0 + (i + 1) * seconds / slices - time.monotonic()
        if lag > 0:
            time.sleep(lag)
    total.seconds = time.monotonic() - t0
    return total


def _minute(samples: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    rows = [s for s in samples if start <= s["at"] < end]
    if not rows:
        return {}
    tasks = sorted(r["tasks"] for r in rows)
    return {"samples": len(rows), "RSS MiB": round(sum(r["rss_kib"] for r in rows) / len(rows) / 1024, 1),
            "fds max": max(r["fds"] for r in rows), "tasks median": tasks[len(tasks) // 2],
            "tasks max": tasks[-1], "threads max": max(r["threads"] for r in rows),
            "cache entries": rows[-1]["cache_entries"]}


def _upstream_per_key(log: list[dict[str, Any]], agents: set[str]) -> dict[str, Any]:
    """Per (identity, leg) of the soak's identities: requests and the gaps between them."""
    times: dict[tuple[str, str], list[float]] = {}
    for e in log:
        leg = e.get("leg")
        who = e.get("fmi_path") if leg == "t1" else e.get("client_id")
        if leg in ("t1", "app") and who in agents and e.get("status") == 200:
            times.setdefault((who, leg), []).append(e["time"])
    out: dict[str, Any] = {}
    for leg in ("t1", "app"):
        series = [sorted(v) for (_who, lg), v in times.items() if lg == leg]
        gaps = [b - a for s in series for a, b in itertools.pairwise(s)]
        counts = [len(s) for s in series]
        out[leg] = {"identities": len(series), "requests": sum(counts),
                    "per identity min-max": f"{min(counts, default=0)}-{max(counts, default=0)}",
                    "gap s min": round(min(gaps), 1) if gaps else None,
                    "gap s median": round(sorted(gaps)[len(gaps) // 2], 1) if gaps else None,
                    "gap s max": round(max(gaps), 1) if gaps else None}
    return out


def soak(ctx: Ctx) -> dict[str, Any]:
    """Mixed load for ``--soak-duration`` with every warm identity's tokens refreshed ahead many times
    (short lifetimes in the emulator): RSS, fds, tasks and threads of the first vs the last minute,
    errors, and the upstream requests per identity against the refresh schedule."""
    from loadtests.scenarios_flows import mixed_requests

    o = ctx.opts
    duration = o.soak_duration or o.dur(600.0)
    n = 20 if o.smoke else SOAK_IDENTITIES
    lifetime = 30 if o.smoke else SOAK_LIFETIME
    policy_margin = min(300.0, 0.5 * lifetime)  # Broker__Cache defaults: MinRemaining 300 s, RefreshFraction 0.5
    period = lifetime - policy_margin  # a token must be replaced this often to stay fresh: the minimum
    earliest = period - 0.1 * (lifetime - period)  # JitterFraction 0.1 only refreshes earlier
    samples: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    with scenario(ctx):
        emu = Emulator(ctx.workdir, n)
        ctx.started.append(emu)
        admin = emu.admin()
        admin.settings(access_token_lifetime=[lifetime, lifetime], exchange_token_lifetime=lifetime)
        env = scale_env(n) | {"PROBE_INTERVAL": "5"}
        broker = ctx.broker(emu, env, probe_out=ctx.workdir / "probe.jsonl")
        ids = procs.agent_ids(n)
        paths = [(agent_path(a), {}) for a in ids]
        w = _paced_warm(broker.url, paths, 2.0 if o.smoke else min(period, 60.0), o.warm_budget)
        lines = paths + mixed_requests(admin, 5)
        reqs = ctx.requests_file("soak", lines)
        seq = admin.log()["last_seq"]
        t0 = time.time()
        out: list[Any] = []
        thread = threading.Thread(target=lambda: out.append(ctx.wrk(
            broker.url, reqs, duration, connections=SOAK_CONNECTIONS, delay_ms=SOAK_DELAY_MS)), daemon=True)
        thread.start()
        while thread.is_alive():  # the emulator's log is a ring: read it as the soak goes
            thread.join(min(20.0, duration))
            page = admin.log(seq)
            log += page["requests"]
            seq = page["last_seq"]
        t_end = time.time()
        time.sleep(1.0)
        samples = broker.samples()
        final = broker.stats()
    res = out[0]
    first, last = _minute(samples, t0, t0 + 60), _minute(samples, t_end - 60, t_end + 1)
    window = [e for e in log if t0 <= e["time"] <= t_end]
    single = {a.lower() for a in ids[2:]}  # the first two (the demo agents) also serve OBO, agent user, 2 APIs
    per_key = _upstream_per_key(window, single)
    refused: dict[str, int] = {}
    for e in window:
        if e.get("status") != 200 and e.get("endpoint") == "token":
            what = f"{e.get('leg')} {e.get('status')} {e.get('error_code')}"
            refused[what] = refused.get(what, 0) + 1
    errors = res.failed
    rss_growth = (last.get("RSS MiB", 0) - first.get("RSS MiB", 0)) / max(1e-9, first.get("RSS MiB", 1))
    flat = {k: (first.get(k), last.get(k)) for k in ("fds max", "threads max", "tasks median")}
    no_growth = all(a is not None and b is not None and b <= a for a, b in (flat["fds max"], flat["threads max"]))
    no_growth = no_growth and (flat["tasks median"][1] or 0) <= (flat["tasks median"][0] or 0) + 5
    app, t1 = per_key["app"], per_key["t1"]
    spaced = app["gap s min"] is not None and app["gap s min"] >= earliest - 1.0
    kept_fresh = app["gap s max"] is not None and app["gap s max"] <= period + 5.0
    lifetimes = (t_end - t0) / lifetime
    per_lifetime = {leg: round(v["requests"] / max(1, v["identities"]) / lifetimes, 2) for leg, v in per_key.items()}
    mean_period = (period + earliest) / 2  # the refresh time is drawn in [earliest, period]
    expected = round(lifetime / mean_period, 2)
    return {
        "scenario": "soak",
        "description": f"{duration:g} s of mixed load ({SOAK_CONNECTIONS} connections, {SOAK_DELAY_MS:g} ms between "
                       f"requests each: autonomous hits over {n} identities, agent OBO, agent user) with token "
                       f"lifetimes of {lifetime} s in the emulator, so every used token is refreshed ahead about "
                       f"{duration / period:.0f} times; probe samples every 5 s.",
        "table": [{"minute": "first", **first}, {"minute": "last", **last}],
        "extra_tables": {
            "load": [{"requests": res.requests, "req/s": round(res.rps, 1), "errors": errors,
                      "p50 µs": res.latency_us["p50"], "p99 µs": res.latency_us["p99"],
                      "warmed": w.ok, "final RSS MiB": round(final["rss_kib"] / 1024, 1), "final fds": final["fds"]}],
            "upstream requests per identity (the soak's single-key identities, during the load)": [
                {"leg": leg, **v, "per identity per lifetime": per_lifetime[leg]} for leg, v in per_key.items()],
        },
        "goals": [
            goal("errors", "0", errors, errors == 0),
            goal("upstream calls refused or failed", "0", refused or 0, not refused),
            goal("RSS flat (last vs first minute)", "< 5% growth", f"{rss_growth * 100:.1f}%", rss_growth < 0.05),
            goal("fds, threads, tasks flat (first vs last minute)", "no growth", flat, no_growth),
            goal("app token requests per identity per lifetime", f"{lifetime / period:g} (one per {period:g} s, "
                 f"refresh at half-life); {expected} with the refresh jitter", per_lifetime["app"],
                 spaced and kept_fresh and abs(per_lifetime["app"] - expected) <= 0.1 * expected),
            goal("T1 requests per identity", "<= app token requests (a T1 serves the app refreshes while fresh)",
                 f"{t1['requests']} T1 / {app['requests']} app", t1["requests"] <= app["requests"]),
        ],
        "notes": [f"gaps between two app-token requests of one identity: {app['gap s min']}-{app['gap s max']} s; "
                  f"the policy refreshes a used token between {earliest:g} and {period:g} s after it was acquired "
                  "(half its lifetime, jittered earlier by up to 10% of the rest), so a shorter gap would be a "
                  "duplicate call and a longer one a lapse.",
                  "the first two identities (the demo agents) also serve agent OBO, agent-user and a second API: "
                  "they are left out of the per-identity counts (the emulator's log does not name the resource).",
                  "fds include the 16 load connections; tasks include one per open connection and each refresh "
                  "in flight (median per minute)."],
        "samples": samples,
    }


# -- hit latency at scale --------------------------------------------------------------------------


def scale(ctx: Ctx) -> dict[str, Any]:
    """Hit latency with N identities cached vs 1, measured in one run: two brokers with the same
    settings, one warmed with N identities (wrk cycling through all of them), one with a single
    identity; saturated (``--connections``) and one connection, interleaved rounds."""
    o = ctx.opts
    duration = o.dur(10.0)
    n = max(o.identities)
    with scenario(ctx):
        emu = Emulator(ctx.workdir, n)
        ctx.started.append(emu)
        env = scale_env(n)
        small, big = ctx.broker(emu, env), ctx.broker(emu, env)
        ids = procs.agent_ids(n)
        paths = [(agent_path(a), {}) for a in ids]
        one = ctx.requests_file("scale-one", [paths[0]])
        warm_paths(small.url, [paths[0]], concurrency=1, max_seconds=60)
        w = warm_paths(big.url, paths, concurrency=WARM_CONCURRENCY, max_seconds=o.warm_budget)
        many = ctx.requests_file("scale-many", [(p, {}) for p in w.done_paths])
        stats = big.stats()
        modes = {"saturated": o.connections, "1 connection": 1}
        runs: dict[str, list[Any]] = {f"{who} {mode}": [] for mode in modes for who in ("1 identity", "N identities")}
        for _ in range(o.rounds):
            for mode, conns in modes.items():
                runs[f"1 identity {mode}"].append(ctx.wrk(small.url, one, duration, connections=conns))
                runs[f"N identities {mode}"].append(ctx.wrk(big.url, many, duration, connections=conns))
        small_stats = small.stats()
    ok = w.ok
    rows, goals = [], []
    for mode in modes:
        a, b = runs[f"1 identity {mode}"], runs[f"N identities {mode}"]
        ratio = {q: spread([y.latency_us[q] / x.latency_us[q] for x, y in zip(a, b, strict=True) if x.latency_us[q]])
                 for q in ("p50", "p99")}
        thr = spread([y.rps / x.rps for x, y in zip(a, b, strict=True) if x.rps])
        for who, series in (("1 identity", a), (f"{ok} identities", b)):
            rows.append({"mode": mode, "broker": who,
                         "req/s median": spread([r.rps for r in series])["median"],
                         "p50 µs": spread([r.latency_us["p50"] for r in series])["median"],
                         "p99 µs": spread([r.latency_us["p99"] for r in series])["median"],
                         "errors": sum(r.failed for r in series), "rounds": len(series)})
        rows.append({"mode": mode, "broker": "ratio N / 1", "req/s median": thr["median"],
                     "p50 µs": f"{ratio['p50']['median']:.3f}x [{ratio['p50']['min']:.2f}-{ratio['p50']['max']:.2f}]",
                     "p99 µs": f"{ratio['p99']['median']:.3f}x [{ratio['p99']['min']:.2f}-{ratio['p99']['max']:.2f}]",
                     "errors": "", "rounds": ""})
        for q in ("p50", "p99"):
            med = ratio[q]["median"]
            goals.append(goal(f"{q} at {ok} identities vs 1, {mode}", "<= 1.1x (floor 1.2x)", f"{med:.3f}x",
                              med <= 1.1))
    notes = [f"both brokers have the same settings (cache room for {n} identities, BENCH_LIMITS); each identity is "
             "one autonomous key (T1 + app token); wrk cycles through every warmed identity in order (the "
             "1-identity broker repeats one request, so it also gets every per-connection memo's best case).",
             f"ratios per round (back to back), median [min-max] over {o.rounds} rounds; wrk -t1, "
             f"-c{o.connections} saturated, -c1 for one connection; latencies include wrk and the loopback.",
             f"RSS: {stats['rss_kib'] / 1024:.0f} MiB with {ok} identities, {small_stats['rss_kib'] / 1024:.0f} MiB with 1; "
             f"warm-up {w.seconds:.0f} s."]
    if ok < n:
        notes.append(f"warm budget ({o.warm_budget:g} s) ran out: {ok} of {n} identities warmed.")
    return {
        "scenario": "scale",
        "description": f"Cache-hit latency with {ok} identities cached vs 1 (two brokers, same settings, "
                       "interleaved rounds), saturated and over one connection.",
        "table": rows, "goals": goals, "notes": notes,
        "raw": {k: [r.as_dict() for r in v] for k, v in runs.items()},
    }
