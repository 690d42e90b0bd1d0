"""Refresh-ahead through the HTTP API with short emulator lifetimes.

The emulator issues 6 s access tokens and 8 s exchange tokens; the broker keeps
2 s of minimum remaining lifetime. Over ~16 s (several lifetimes) one hot app key
and a dozen hot OBO keys are requested continuously: no request may fail, every
served token must keep more than the floor, each new token must appear before the
previous one expires, and the refreshes of keys acquired together must be spread
by jitter. An idle key must not be refreshed at all.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import aiohttp

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.cache_helpers import A1, A2, Reply, app_path, client_session, fetch, select
from tests.integration.conftest import BrokerFactory

LIFETIME = 6
EXCHANGE_LIFETIME = 8
MIN_REMAINING = 2.0
STALE_FLOOR = 1.0
RUN_SECONDS = 16.0
OBO_KEYS = 12
# The emulator's ``exp`` is ``int(now) + lifetime``: a token may have up to 1 s less than the
# broker computed from ``expires_in``.
EXP_ROUNDING = 1.0


async def _hammer(
    session: aiohttp.ClientSession, url: str, until: float, token: str | None = None
) -> list[Reply]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    replies = []
    while time.time() < until:
        replies.append(await fetch(session, url, headers=headers))
        await asyncio.sleep(0.05)
    return replies


def _check_served(replies: list[Reply]) -> list[Reply]:
    """Every reply is a token with more than the floor left; returns the first reply of each new token."""
    assert replies
    bad = [r for r in replies if r.status != 200]
    assert not bad, [(r.status, r.body) for r in bad[:3]]
    for r in replies:
        assert r.remaining > MIN_REMAINING - EXP_ROUNDING, (r.remaining, r.claims["exp"])
    firsts: list[Reply] = []
    seen: set[str] = set()
    for r in replies:
        if r.token not in seen:
            seen.add(r.token)
            firsts.append(r)
    # Each new token was acquired (iat) and served before the previous one expired.
    for old, new in itertools.pairwise(firsts):
        assert new.claims["iat"] < old.claims["exp"], (old.claims, new.claims)
        assert new.received < old.claims["exp"], (new.received, old.claims["exp"])
    return firsts


async def test_hot_keys_are_refreshed_ahead_with_jitter_and_idle_keys_are_not(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    admin.settings(access_token_lifetime=[LIFETIME, LIFETIME], exchange_token_lifetime=EXCHANGE_LIFETIME)
    users = [admin.user_token(demo.DEMO_USER_UPN) for _ in range(OBO_KEYS)]
    async with (
        broker_factory(
            Broker__Cache__MinRemainingSeconds=str(MIN_REMAINING),
            Broker__Cache__StaleFloorSeconds=str(STALE_FLOOR),
            Broker__Cache__JitterFraction="0.5",
        ) as broker,
        client_session() as session,
    ):
        api = broker.api_urls[0]
        idle = await fetch(session, api + app_path(A2))  # requested once, then never again
        assert idle.status == 200
        until = time.time() + RUN_SECONDS
        obo_url = api + f"/AuthorizationHeader/graph?AgentIdentity={A1}"
        async with asyncio.timeout(RUN_SECONDS + 30):
            hot, *obo = await asyncio.gather(
                _hammer(session, api + app_path(A1), until),
                *(_hammer(session, obo_url, until, token=u) for u in users),
            )
    entries = admin.token_requests()
    failed = [e for e in entries if e["status"] != 200]
    assert not failed, failed[:3]

    # The hot app key: several lifetimes, every one refreshed ahead of expiry.
    firsts = _check_served(hot)
    assert len(firsts) >= 3, len(firsts)
    hot_acquisitions = select(entries, leg="app", client_id=A1)
    # one acquisition per served token (the last one may have landed after the run ended)
    assert len(firsts) <= len(hot_acquisitions) <= len(firsts) + 1, (len(hot_acquisitions), len(firsts))

    # The idle key was acquired once and never refreshed.
    assert len(select(entries, leg="app", client_id=A2)) == 1
    assert len(select(entries, leg="t1", fmi_path=A2)) == 1

    # Many OBO keys acquired together: served the same way, refreshes spread by jitter.
    obo_firsts = [_check_served(replies) for replies in obo]
    assert all(len(f) >= 3 for f in obo_firsts), [len(f) for f in obo_firsts]
    initial = sorted(f[0].received for f in obo_firsts)
    first_refresh = sorted(f[1].received for f in obo_firsts)
    served_tokens = sum(len(f) for f in obo_firsts)
    assert served_tokens <= len(select(entries, leg="obo")) <= served_tokens + OBO_KEYS
    # Acquired together, the keys' first refreshes are spread well beyond the spread of
    # their first acquisitions (no jitter: all within that initial spread).
    initial_spread = initial[-1] - initial[0]
    spread = first_refresh[-1] - first_refresh[0]
    assert spread > max(1.0, initial_spread + 0.5), (initial_spread, first_refresh)
    assert statistics.pstdev(first_refresh) > 0.3, first_refresh
