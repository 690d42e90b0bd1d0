"""Benchmark: cost of a shared-cache (Redis L2) hit versus an Entra (emulator) round trip.

Starts the emulator, a throw-away ``redis-server`` (loopback, no persistence) and one
broker in this process, then measures, in the same run:

* component level: the wrapped acquire function served from Redis (GET + AES-GCM
  open + decode) vs the agent app token leg against the emulator (MSAL + HTTPS);
* end to end over HTTP: an L1 miss answered from Redis vs an L1 miss that goes to
  the emulator (T1 stays cached, so one Entra round trip).

The emulator runs on loopback in this process, so its "round trip" is far cheaper
than real Entra (tens to hundreds of ms): the ratio is a lower bound. Bounded
iterations (well under 30 s on 2 cores). Writes ``loadtests/results/<date>-l2.json``.

Usage: python loadtests/l2_bench.py [--out DIR] [--entra N] [--l2 N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import redis

from agent_token_broker.cache.token import CachedToken
from agent_token_broker.server import running
from agent_token_broker.settings import load_settings
from agent_token_broker.tokens import Flow, TokenRequest
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer

GRAPH_SCOPE = f"{demo.GRAPH_RESOURCE}/.default"
PATH = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_1_ID}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not installed (apt-get install -y redis-server)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--loglevel", "warning"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port).ping():
                return proc, port
        except redis.RedisError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 4),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


async def timed(
    n: int, before: Callable[[], Awaitable[None]], op: Callable[[], Awaitable[object]]
) -> list[float]:
    samples = []
    for _ in range(n):
        await before()
        t0 = time.perf_counter()
        await op()
        samples.append(time.perf_counter() - t0)
    return samples


async def _nothing() -> None:
    return None


async def _never() -> CachedToken:
    raise RuntimeError("an L2 hit must not acquire")


async def bench(
    emulator: EmulatorServer, redis_port: int, workdir: Path, n_entra: int, n_l2: int
) -> dict[str, Any]:
    key_file = workdir / "l2.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    env = {
        "AzureAd__Instance": emulator.url + "/",
        "AzureAd__TenantId": demo.TENANT_ID,
        "AzureAd__ClientId": demo.BLUEPRINT_APP_ID,
        "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
        "AzureAd__ClientCredentials__0__ClientSecret": demo.BLUEPRINT_SECRET,
        "DownstreamApis__graph__Scopes__0": GRAPH_SCOPE,
        "Broker__Listen": "127.0.0.1:0",
        "Broker__OpsListen": "off",
        "Logging__LogLevel__Default": "Warning",
        "Broker__Cache__Redis__Url": f"redis://127.0.0.1:{redis_port}/0",
        "Broker__Cache__Redis__EncryptionKeyFile": str(key_file),
    }
    admin = EmulatorAdmin(emulator.url, emulator.ca_path)
    raw = redis.asyncio.Redis(port=redis_port)
    async with aiohttp.ClientSession() as http, running(load_settings(env=env), wait_ready=30.0) as broker:
        rt = broker.runtime
        shared = rt.shared_cache
        assert shared is not None
        tenant, agent = demo.TENANT_ID, demo.AGENT_1_ID
        req = TokenRequest(Flow.AGENT_APP, (GRAPH_SCOPE,), agent=agent)
        key = rt.tokens.key_for(req)
        name = shared.redis_name(key)
        url = broker.api_urls[0] + PATH

        async def http_get() -> None:
            async with http.get(url) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

        await http_get()  # warm: T1 + app token in L1 and Redis, connections open
        t1 = await rt.tokens.exchange_token(agent, tenant)

        # Component level.
        before = admin.counts().get("app", 0)
        entra = await timed(
            n_entra, _nothing, lambda: rt.legs.agent_app_token(agent, t1, [GRAPH_SCOPE], tenant=tenant)
        )
        entra_requests = admin.counts().get("app", 0) - before
        wrapped = shared.wrap(key, _never, current=lambda: None)
        l2 = await timed(n_l2, _nothing, wrapped)

        # End to end: an L1 miss answered by Redis vs by the emulator.
        async def drop_l1() -> None:
            rt.cache.evict(key)

        async def drop_l1_and_l2() -> None:
            rt.cache.evict(key)
            await raw.delete(name)

        http_l1 = await timed(n_l2, _nothing, http_get)
        http_l2 = await timed(n_l2, drop_l1, http_get)
        before = admin.counts().get("app", 0)
        http_entra = await timed(n_entra, drop_l1_and_l2, http_get)
        http_entra_requests = admin.counts().get("app", 0) - before
    await raw.aclose()
    admin.close()
    c_entra, c_l2 = summary(entra), summary(l2)
    h_entra, h_l2, h_l1 = summary(http_entra), summary(http_l2), summary(http_l1)
    return {
        "benchmark": "l2",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "component": {
            "entra_emulator_round_trip": {**c_entra, "emulator_requests": entra_requests},
            "l2_hit": c_l2,
            "ratio_median": round(c_entra["median_ms"] / c_l2["median_ms"], 1),
        },
        "http_l1_miss": {
            "served_from_entra_emulator": {**h_entra, "emulator_requests": http_entra_requests},
            "served_from_l2": h_l2,
            "baseline_l1_hit": h_l1,
            "ratio_median": round(h_entra["median_ms"] / h_l2["median_ms"], 1),
        },
        "note": "emulator on loopback in the same process: real Entra round trips are slower, the ratio is a lower bound",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--entra", type=int, default=40, help="emulator round trips per measurement")
    parser.add_argument("--l2", type=int, default=300, help="L2 hits per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="l2-bench-") as tmp:
        workdir = Path(tmp)
        emulator = EmulatorServer(workdir / "emulator").start()
        os.environ["REQUESTS_CA_BUNDLE"] = str(emulator.ca_path)
        proc, port = start_redis(workdir)
        try:
            result = asyncio.run(bench(emulator, port, workdir, args.entra, args.l2))
            version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
            result["redis"] = version.stdout.strip()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            emulator.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today().isoformat()}-l2.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
