"""Memory stays bounded whatever callers put in the query string (issue 14, finding 5).

The repro: cache hits with distinct junk parameters grew a broker ~12.6 KB per request, because
the request memo keyed on the raw query string. Now unknown parameters are refused, decisions
are remembered by the canonical parsed request (spelling and no-op variants share one entry),
and both memos are bounded in bytes. This is a bound check on a real ``serve`` process's
resident memory (/proc), not a timing assertion.
"""

from __future__ import annotations

import asyncio
import random
import string

import aiohttp

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.serve_process import serve_process

A1 = demo.AGENT_1_ID
WARM_UP = 2_000
REQUESTS = 20_000
CONCURRENCY = 8
JUNK_PARAMS = 3
JUNK_BYTES = 1_900  # per value: under the per-value length limit, so only the name is wrong
MIB = 1024 * 1024


def _scramble_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def junk_query(i: int, rng: random.Random) -> str:
    """Half refused junk (a distinct unknown parameter with a long value), half cache hits
    spelt differently each time (name case, tenant GUID case, repeated configured scope)."""
    if i % 2:
        junk = (
            f"x{''.join(rng.choices(string.ascii_letters, k=12))}=" + "".join(rng.choices(string.ascii_letters, k=JUNK_BYTES))
            for _ in range(JUNK_PARAMS)
        )
        return f"AgentIdentity={A1}&" + "&".join(junk)
    scope = f"{demo.GRAPH_RESOURCE}/.default"
    return (
        f"{_scramble_case('AgentIdentity', rng)}={A1}"
        f"&{_scramble_case('optionsOverride.AcquireTokenOptions.Tenant', rng)}={_scramble_case(demo.TENANT_ID, rng)}"
        + f"&optionsOverride.Scopes={scope}" * rng.randint(1, 3)
    )


async def _drive(base: str, start: int, count: int, statuses: dict[int, int]) -> None:
    rng = random.Random(start)
    queue = iter(range(start, start + count))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def worker() -> None:
            for i in queue:
                async with http.get(f"{base}/AuthorizationHeaderUnauthenticated/graph?{junk_query(i, rng)}") as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), timeout=300)


async def test_rss_stays_flat_over_junk_parameter_requests(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    with serve_process(emulator) as served:
        statuses: dict[int, int] = {}
        await _drive(served.base, 0, WARM_UP, statuses)
        before = served.rss_bytes()
        await _drive(served.base, WARM_UP, REQUESTS, statuses)
        after = served.rss_bytes()
    assert statuses == {200: (WARM_UP + REQUESTS) // 2, 400: (WARM_UP + REQUESTS) // 2}, statuses
    growth = after - before
    assert abs(growth) <= 10 * MIB, f"RSS {before / MIB:.1f} -> {after / MIB:.1f} MiB over {REQUESTS} requests"
