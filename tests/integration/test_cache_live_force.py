"""ForceRefresh and claims challenges bypass the cache, and are rate-limited per key."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from entra_emulator.runner import EmulatorAdmin
from tests.integration.cache_helpers import A1, A2, app_path, client_session, fetch, select, sleep_until
from tests.integration.conftest import BrokerFactory

INTERVAL = 2.0
OVERRIDES = {  # ForceRefresh and claims on the unauthenticated route, at most once per INTERVAL
    "Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated": "true",
    "Broker__Cache__ForceRefreshMinIntervalSeconds": str(INTERVAL),
}
FORCE = "&optionsOverride.AcquireTokenOptions.ForceRefresh=true"
CLAIMS = "&optionsOverride.AcquireTokenOptions.Claims=" + quote(
    json.dumps({"access_token": {"nbf": {"essential": True, "value": "1700000000"}}})
)


def _app_calls(admin: EmulatorAdmin, agent: str) -> int:
    return len(select(admin.token_requests(), leg="app", client_id=agent, status=200))


async def test_force_refresh_bypasses_the_cache_at_most_once_per_interval(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    async with (
        broker_factory(**OVERRIDES) as broker,
        client_session(limit=200) as s,
    ):
        url = broker.api_urls[0] + app_path(A1)
        cached = await fetch(s, url)
        assert cached.status == 200 and _app_calls(admin, A1) == 1

        forced = await fetch(s, url + FORCE)
        assert forced.status == 200 and forced.token != cached.token
        assert _app_calls(admin, A1) == 2
        assert (await fetch(s, url)).token == forced.token  # the forced token replaced the cached one

        # Within the interval: a stampede of ForceRefresh costs nothing upstream.
        async with asyncio.timeout(30):
            burst = await asyncio.gather(*(fetch(s, url + FORCE) for _ in range(100)))
        assert {r.status for r in burst} == {200}
        assert {r.token for r in burst} == {forced.token}
        assert _app_calls(admin, A1) == 2

        # The interval runs from the forced refresh, which the broker made before answering it.
        await sleep_until(forced.received + INTERVAL)
        # After the interval: a concurrent burst makes exactly one upstream request.
        async with asyncio.timeout(30):
            burst = await asyncio.gather(*(fetch(s, url + FORCE) for _ in range(100)))
        assert {r.status for r in burst} == {200}
        tokens = {r.token for r in burst}
        assert len(tokens) == 1 and forced.token not in tokens
        assert _app_calls(admin, A1) == 3
        assert _app_calls(admin, A2) == 0


async def test_claims_challenge_bypasses_the_cache_and_is_rate_limited(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    async with (
        broker_factory(**OVERRIDES) as broker,
        client_session() as s,
    ):
        url = broker.api_urls[0] + app_path(A2)
        cached = await fetch(s, url)
        assert cached.status == 200 and _app_calls(admin, A2) == 1
        challenged = await fetch(s, url + CLAIMS)
        assert challenged.status == 200, challenged.body
        assert challenged.token != cached.token
        assert _app_calls(admin, A2) == 2
        # The resource repeats its challenge at once: served without another upstream request.
        again = await fetch(s, url + CLAIMS)
        assert again.status == 200 and again.token == challenged.token
        assert _app_calls(admin, A2) == 2
        await sleep_until(challenged.received + INTERVAL)
        later = await fetch(s, url + CLAIMS)
        assert later.status == 200 and later.token != challenged.token
        assert _app_calls(admin, A2) == 3
