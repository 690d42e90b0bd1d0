"""Python-side clients: warming many keys (bounded in time) and the cold stampede (N sockets, one shot)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp


@dataclass
class WarmResult:
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    done_paths: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "seconds": round(self.seconds, 2),
                "per_second": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
                "statuses": {str(k): v for k, v in self.statuses.items()}}


async def _warm(base: str, requests: Sequence[tuple[str, dict[str, str]]], concurrency: int,
                deadline: float) -> WarmResult:
    result = WarmResult()
    queue = iter(requests)
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def worker() -> None:
            for path, headers in queue:
                if time.monotonic() > deadline:
                    return
                try:
                    async with http.get(base + path, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (TimeoutError, aiohttp.ClientError):
                    status = 0
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.ok += 1
                    result.done_paths.append(path)
                else:
                    result.failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - t0
    return result


def warm(base: str, requests: Sequence[tuple[str, dict[str, str]]], *, concurrency: int = 32,
         max_seconds: float = 300.0) -> WarmResult:
    """GET every request once (``concurrency`` at a time) until done or ``max_seconds`` have passed."""
    return asyncio.run(_warm(base, requests, concurrency, time.monotonic() + max_seconds))


@dataclass
class StampedeResult:
    clients: int
    ok: int
    statuses: dict[int, int]
    latency_ms: dict[str, float]
    wall_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"clients": self.clients, "ok": self.ok, "statuses": {str(k): v for k, v in self.statuses.items()},
                "latency_ms": self.latency_ms, "wall_seconds": round(self.wall_seconds, 3)}


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _stampede(base: str, path: str, clients: int, limit_s: float) -> StampedeResult:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    conns = []
    for _ in range(clients):  # connect first, so the burst measures the broker, not accept()
        conns.append(await asyncio.wait_for(asyncio.open_connection(host, port), limit_s))
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n").encode()
    gate = asyncio.Event()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, float]:
        await gate.wait()
        t0 = time.perf_counter()
        writer.write(request)
        try:
            data = await asyncio.wait_for(reader.read(), limit_s)
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        except (TimeoutError, OSError, ValueError, IndexError):
            status = 0
        finally:
            writer.close()
        return status, (time.perf_counter() - t0) * 1000

    tasks = [asyncio.ensure_future(one(r, w)) for r, w in conns]
    await asyncio.sleep(0.05)
    wall0 = time.perf_counter()
    gate.set()
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - wall0
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    lat = [ms for _, ms in results]
    summary = {name: round(percentile(lat, p), 2) for name, p in
               (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}
    return StampedeResult(clients, statuses.get(200, 0), statuses, summary, wall)


def stampede(base: str, path: str, *, clients: int = 1000, timeout: float = 30.0) -> StampedeResult:
    """``clients`` pre-opened connections each send one GET for ``path`` at the same moment."""
    return asyncio.run(_stampede(base, path, clients, timeout))
