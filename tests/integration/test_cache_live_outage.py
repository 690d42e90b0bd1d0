"""Static stability through an emulator outage (503s, then hangs, then connection resets).

Three hot keys (14 s tokens, refreshed from ~2.8 s, below the 5 s minimum remaining
lifetime from 9 s) are served continuously while the emulator fails every token
request for 10 s: longer than a refresh interval and past the point where the
tokens are normally replaced. Every request must still get a valid cached
token without waiting on the failing upstream (each completes before a hung upstream
call would even time out), and when the emulator recovers each hot key costs one
upstream request, not one per waiting request.
"""

from __future__ import annotations

import asyncio
import time

from entra_emulator.runner import EmulatorAdmin
from tests.integration.cache_helpers import A1, A2, app_path, client_session, fetch, fetching, select
from tests.integration.conftest import BrokerFactory

LIFETIME = 14
READ_TIMEOUT = 1.5
STALE_FLOOR = 1.0
WORKERS_PER_KEY = 4
PHASE = {"503": 4.0, "hang": 3.5, "reset": 2.5}
AFTER_RECOVERY = 1.5
KEYS = [(A1, "graph"), (A1, "demo"), (A2, "graph")]


async def test_outage_is_ridden_out_from_cache_and_recovery_costs_one_request_per_key(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    admin.settings(access_token_lifetime=[LIFETIME, LIFETIME], exchange_token_lifetime=LIFETIME + 16)
    async with (
        broker_factory(
            Broker__Cache__MinRemainingSeconds="5",
            Broker__Cache__StaleFloorSeconds=str(STALE_FLOOR),
            Broker__Cache__RefreshFraction="0.2",
            Broker__Cache__BackoffBaseSeconds="0.5",
            Broker__Cache__BackoffCapSeconds="1",
            Broker__Cache__RetryAfterCapSeconds="1",
            Broker__Cache__NegativeTtlSeconds="1",
            Broker__Upstream__ReadTimeoutSeconds=str(READ_TIMEOUT),
            Broker__Upstream__ConnectTimeoutSeconds="1",
        ) as broker,
        client_session() as session,
    ):
        urls = {key: broker.api_urls[0] + app_path(*key) for key in KEYS}
        first = {key: await fetch(session, url) for key, url in urls.items()}
        assert {r.status for r in first.values()} == {200}
        before_outage = admin.last_seq()

        async with fetching(session, urls, WORKERS_PER_KEY) as replies:
            outage_start = time.time()
            admin.fault(target="token", mode="status", status=503, plain_text=True, count=2)
            admin.fault(target="token", mode="status", status=503)
            await asyncio.sleep(PHASE["503"])
            admin.fault(target="token", mode="hang", replace=True)  # no gap between the two phases
            hang_start = time.time()
            await asyncio.sleep(PHASE["hang"])
            # releases the hung requests (closed without an answer) in the same step
            admin.fault(target="token", mode="reset", replace=True)
            await asyncio.sleep(PHASE["reset"])
            during_outage = admin.last_seq()  # read before the faults clear: no success can slip in
            admin.clear_faults()
            recovered = time.time()
            await asyncio.sleep(AFTER_RECOVERY)

    outage = admin.token_requests(before_outage)
    # A request between that read and clear_faults was still failed by a fault: it belongs to the outage.
    in_outage = [e for e in outage if e["seq"] <= during_outage or e["fault"]]
    after = [e for e in outage if e["seq"] > during_outage and not e["fault"]]
    # The outage spanned a refresh interval: every hot key tried to refresh, and every try failed.
    assert in_outage and all(e["status"] != 200 for e in in_outage), in_outage
    for agent, _api in KEYS:
        assert select(in_outage, leg="app", client_id=agent)
    faults = {e["fault"] for e in in_outage}
    assert {"status", "hang", "reset"} <= faults, faults
    # A hung call was cut by the read timeout: the same key was tried again while the hang lasted.
    hung = [e for e in in_outage if e["fault"] == "hang"]
    hang_end = hang_start + PHASE["hang"]
    assert any(
        later["time"] >= h["time"] + READ_TIMEOUT and later["time"] < hang_end
        for h in hung
        for later in hung
        if later["client_id"] == h["client_id"] and later["leg"] == h["leg"]
    ), hung

    total_requests = 0
    for key in KEYS:
        served = replies[key]
        total_requests += len(served)
        bad = [r for r in served if r.status != 200]
        assert not bad, [(r.status, r.body) for r in bad[:3]]
        for r in served:
            # valid, above the degraded floor (1 s of emulator exp rounding allowed)
            assert r.remaining > STALE_FLOOR - 1.0, r.remaining
            if outage_start <= r.sent and r.received <= recovered:
                # served from cache: never waited on the failing upstream
                assert r.token == first[key].token
                assert r.elapsed < READ_TIMEOUT, r.elapsed
        assert served[-1].token != first[key].token  # refreshed after recovery

    # Recovery: exactly one successful upstream request per hot key (plus none for T1,
    # which is still fresh), however many requests were waiting.
    ok_after = select(after, status=200)
    per_key = {key: len(select(ok_after, leg="app", client_id=key[0])) for key in KEYS}
    assert sorted(e["leg"] for e in ok_after).count("app") == len(KEYS), ok_after
    assert per_key[(A2, "graph")] == 1, per_key
    assert len(after) <= len(KEYS) + 2, after  # at most a T1 retry per agent besides
    # Upstream attempts during the whole outage are a small fraction of the requests served.
    assert len(in_outage) * 10 < total_requests, (len(in_outage), total_requests)
    assert recovered - outage_start > 9
