"""429 with Retry-After: the throttled key is not retried upstream before Retry-After; others are unaffected.

MSAL's own throttle replay is disabled (agent_token_broker/entra/apps.py): it keys a 429 without
``fmi_path``, so one throttled agent's T1 would block its sibling agents' T1 requests.
"""

from __future__ import annotations

import asyncio
import time

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.cache_helpers import A1, A2, Reply, app_path, client_session, fetch, select
from tests.integration.conftest import BrokerFactory

RETRY_AFTER = 3


def throttle_once(admin: EmulatorAdmin, retry_after: int, match: dict[str, str]) -> None:
    """The next token request that ``match``es is answered HTTP 429 with ``Retry-After``."""
    admin.fault(target="token", mode="status", status=429, retry_after=retry_after, count=1, match=match)


async def test_429_on_a_cold_key_holds_that_key_for_retry_after_only(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    throttle_once(admin, RETRY_AFTER, {"leg": "app", "client_id": A1})
    async with broker_factory() as broker, client_session() as s:
        url1 = broker.api_urls[0] + app_path(A1)
        first = await fetch(s, url1)
        assert first.status == 503 and first.content_type == "application/problem+json", first.body
        assert first.body["errorCode"] == "AADSTS90055", first.body
        assert int(first.headers["Retry-After"]) == RETRY_AFTER
        throttled_at = select(admin.token_requests(), leg="app", client_id=A1, status=429)[0]["time"]

        # Until Retry-After has passed: refused at once from the negative cache, no upstream request.
        repeats: list[Reply] = []
        while time.time() < throttled_at + RETRY_AFTER - 0.3:
            repeats.append(await fetch(s, url1))
            other = await fetch(s, broker.api_urls[0] + app_path(A2))
            assert other.status == 200, other.body  # another agent is not held back
            await asyncio.sleep(0.1)
        assert len(repeats) >= 10
        assert all(r.status == 503 for r in repeats), [r.status for r in repeats]
        assert all(1 <= int(r.headers["Retry-After"]) <= RETRY_AFTER for r in repeats)
        assert len(select(admin.token_requests(), leg="app", client_id=A1)) == 1

        await asyncio.sleep(max(0.0, throttled_at + RETRY_AFTER + 0.1 - time.time()))
        after = await fetch(s, url1)
        assert after.status == 200, after.body
    a1_calls = select(admin.token_requests(), leg="app", client_id=A1)
    assert [e["status"] for e in a1_calls] == [429, 200]
    assert a1_calls[1]["time"] >= throttled_at + RETRY_AFTER
    assert len(select(admin.token_requests(), leg="app", client_id=A2)) == 1  # A2 cached after its first


async def test_429_on_one_agents_t1_does_not_throttle_sibling_agents(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    throttle_once(admin, 30, {"leg": "t1", "fmi_path": A1})
    async with broker_factory() as broker, client_session() as s:
        throttled = await fetch(s, broker.api_urls[0] + app_path(A1))
        assert throttled.status == 503 and int(throttled.headers["Retry-After"]) == 30
        seq = admin.last_seq()
        sibling = await fetch(s, broker.api_urls[0] + app_path(A2))
        assert sibling.status == 200, sibling.body
        # The sibling's T1 (same blueprint client, other fmi_path) really went to the authority.
        assert len(select(admin.token_requests(seq), leg="t1", fmi_path=A2, status=200)) == 1


async def test_429_during_a_background_refresh_serves_the_cached_token_and_waits_retry_after(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    admin.settings(access_token_lifetime=[12, 12])
    async with (
        broker_factory(
            Broker__Cache__MinRemainingSeconds="3",
            Broker__Cache__StaleFloorSeconds="1",
            Broker__Cache__RefreshFraction="0.2",
            Broker__Cache__BackoffBaseSeconds="0.2",
            Broker__Cache__BackoffCapSeconds="0.5",
        ) as broker,
        client_session() as s,
    ):
        url = broker.api_urls[0] + "/AuthorizationHeaderUnauthenticated/graph"  # the blueprint's app token
        first = await fetch(s, url)
        assert first.status == 200
        assert (
            first.claims["azp"] == demo.BLUEPRINT_APP_ID or first.claims.get("appid") == demo.BLUEPRINT_APP_ID
        )
        throttle_once(admin, RETRY_AFTER, {"leg": "blueprint_app"})
        replies: list[Reply] = []
        deadline = time.time() + 7.5
        while time.time() < deadline:
            replies.append(await fetch(s, url))
            await asyncio.sleep(0.05)
    calls = select(admin.token_requests(), leg="blueprint_app")
    # The first acquisition, the throttled refresh, its retry; on a slow machine the new token's
    # own regular refresh may also fall inside the window (it must succeed: the fault was count=1).
    statuses = [e["status"] for e in calls]
    assert statuses[:3] == [200, 429, 200] and set(statuses[3:]) <= {200} and len(statuses) <= 4, calls
    assert calls[2]["time"] >= calls[1]["time"] + RETRY_AFTER  # not retried before Retry-After
    assert all(r.status == 200 for r in replies)  # the throttled refresh never reached a caller
    tokens = [r.token for r in replies]
    assert tokens[0] == first.token and tokens[-1] != first.token
    assert all(r.remaining > 0 for r in replies)


async def test_a_throttling_code_on_http_400_is_transient_not_a_refusal(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    """Entra throttles user flows with HTTP 400, ``invalid_grant`` and AADSTS50196 (and a tenant
    with 90055): the broker rides it out (503 with Retry-After, the key not refused, nothing
    revoked), whatever the status. Kills the mutation that drops THROTTLE_CODES (issue 21)."""
    async with broker_factory() as broker, client_session() as s:
        warm = await fetch(s, broker.api_urls[0] + app_path(A2))
        assert warm.status == 200
        for code in (50196, 90055):
            admin.fault(
                target="token", mode="status", status=400, error_code=code, error="invalid_grant",
                retry_after=1, count=1, match={"leg": "app", "client_id": A1},
            )  # fmt: skip
            throttled = await fetch(s, broker.api_urls[0] + app_path(A1, "graph" if code == 50196 else "demo"))
            assert throttled.status == 503 and throttled.content_type == "application/problem+json"
            assert throttled.body["errorCode"] == f"AADSTS{code}", throttled.body
            assert "Retry-After" in throttled.headers
        seq = admin.last_seq()
        assert (await fetch(s, broker.api_urls[0] + app_path(A2))).token == warm.token  # nothing revoked
        assert admin.token_requests(seq) == []
        async with asyncio.timeout(10):  # once its Retry-After has passed the key is asked for again
            while (await fetch(s, broker.api_urls[0] + app_path(A1))).status != 200:
                await asyncio.sleep(0.1)
    assert [e["status"] for e in select(admin.token_requests(), leg="app", client_id=A1)] == [400, 400, 200]
    assert not select(admin.token_requests(), leg="t1", status=400)
