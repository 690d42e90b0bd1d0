"""Single-flight through the HTTP API: a stampede on one cold key costs Entra one request per leg."""

from __future__ import annotations

import asyncio
from typing import Any

from entra_emulator.runner import EmulatorAdmin
from tests.integration.cache_helpers import A1, A2, app_path, client_session, fetch, select
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import scrape, value, wait_for_metric

CONCURRENCY = 1000


async def test_thousand_concurrent_cold_requests_make_one_upstream_request_per_leg(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    # Hold every token response for a moment so all 1,000 requests are waiting at once.
    admin.fault(target="token", mode="latency", latency_ms=400)
    async with broker_factory() as broker, client_session(limit=CONCURRENCY + 10) as session:
        url = broker.api_urls[0] + app_path(A1)
        async with asyncio.timeout(60):
            replies = await asyncio.gather(*(fetch(session, url) for _ in range(CONCURRENCY)))
    statuses = {r.status for r in replies}
    assert statuses == {200}, statuses
    assert len({r.token for r in replies}) == 1
    assert replies[0].claims["oid"] == A1
    entries = admin.token_requests()
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["leg"]] = counts.get(e["leg"], 0) + 1
    assert counts == {"t1": 1, "app": 1}, counts


async def test_disconnected_waiters_do_not_cancel_the_shared_acquisition(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    # The authority holds each answer (T1, then the app token) while the 100 requests join.
    admin.fault(target="token", mode="latency", latency_ms=800)
    async with broker_factory() as broker, client_session(limit=200) as session:
        url = broker.api_urls[0] + app_path(A2, "demo")
        joined = value(await scrape(session, broker), "cache_lookups_total", result="coalesced")
        quitters = [asyncio.ensure_future(fetch(session, url)) for _ in range(50)]
        stayers = [asyncio.ensure_future(fetch(session, url)) for _ in range(50)]
        # All 100 are waiting on the one acquisition: one started it, 99 joined it.
        await wait_for_metric(
            session, broker, "cache_lookups_total", lambda n: n >= joined + 99, result="coalesced"
        )
        for task in quitters:
            task.cancel()  # the client hangs up
        async with asyncio.timeout(30):
            replies = await asyncio.gather(*stayers)
            late = await fetch(session, url)
        results: list[Any] = await asyncio.gather(*quitters, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert {r.status for r in replies} == {200}
    assert len({r.token for r in replies}) == 1
    assert late.status == 200 and late.token == replies[0].token
    entries = admin.token_requests()
    assert len(select(entries, leg="t1", status=200)) == 1
    assert len(select(entries, leg="app", client_id=A2)) == 1
    assert len(entries) == 2, entries
