"""Revocation-aware refresh: disabling an agent (or its blueprint) in the emulator stops the
broker serving its tokens at the next refresh, not at expiry; other agents keep working."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.cache_helpers import (
    A1,
    A2,
    UNAUTH,
    Reply,
    app_path,
    client_session,
    fetch,
    fetching,
    select,
)
from tests.integration.conftest import BrokerFactory

LIFETIME = 8
NEGATIVE_TTL = 1.0
PHASE_TIMEOUT = 10.0


async def _until(predicate: object, timeout: float = PHASE_TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


def _refused(replies: list[Reply], since: float) -> Reply | None:
    return next((r for r in replies if r.sent >= since and r.status != 200), None)


def _check_revoked_at_refresh(replies: list[Reply], since: float, until: float) -> None:
    """The key went from 200 to a 401 AADSTS7000112 problem before its last token expired."""
    refused = _refused(replies, since)
    assert refused is not None
    assert refused.status == 401 and refused.content_type == "application/problem+json", refused.body
    assert refused.body["errorCode"] == "AADSTS7000112", refused.body
    last_ok = [r for r in replies if r.status == 200 and r.received <= refused.sent][-1]
    assert refused.received < last_ok.claims["exp"] - 0.5  # at the refresh, well before expiry
    assert all(r.status == 401 for r in replies if refused.received <= r.sent and r.received < until)


async def test_disabling_an_agent_then_its_blueprint_stops_tokens_at_the_next_refresh(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    admin.settings(access_token_lifetime=[LIFETIME, LIFETIME], exchange_token_lifetime=LIFETIME + 2)
    async with (
        broker_factory(
            Broker__Cache__MinRemainingSeconds="2",
            Broker__Cache__StaleFloorSeconds="1",
            Broker__Cache__NegativeTtlSeconds=str(NEGATIVE_TTL),
        ) as broker,
        client_session() as session,
    ):
        api = broker.api_urls[0]
        urls = {
            "a1-graph": api + app_path(A1),
            "a1-demo": api + app_path(A1, "demo"),
            "a2-graph": api + app_path(A2),
            "blueprint": api + f"{UNAUTH}/graph",
        }
        async with fetching(session, urls) as replies:
            await _until(lambda: all(replies.values()))
            assert all(r[0].status == 200 for r in replies.values())

            admin.disable_agent(A1)
            agent_off = time.time()
            await _until(
                lambda: _refused(replies["a1-graph"], agent_off) and _refused(replies["a1-demo"], agent_off)
            )
            agent_stopped = time.time()
            await asyncio.sleep(2 * NEGATIVE_TTL + 0.2)  # refused requests keep coming
            revoked_seq = admin.last_seq()

            admin.disable_blueprint(demo.BLUEPRINT_APP_ID)
            blueprint_off = time.time()
            await _until(
                lambda: (
                    _refused(replies["a2-graph"], blueprint_off)
                    and _refused(replies["blueprint"], blueprint_off)
                )
            )

            admin.enable_blueprint(demo.BLUEPRINT_APP_ID)
            admin.enable_agent(A1)
            enabled_seq = admin.last_seq()
            enabled = time.time()
            await _until(
                lambda: all(r and r[-1].sent > enabled and r[-1].status == 200 for r in replies.values()),
                timeout=NEGATIVE_TTL + 8,
            )

    # Phase 1: A1 stopped at its next refresh; A2 and the blueprint's own token never failed.
    _check_revoked_at_refresh(replies["a1-graph"], agent_off, enabled)
    _check_revoked_at_refresh(replies["a1-demo"], agent_off, enabled)
    for name in ("a2-graph", "blueprint"):
        assert all(r.status == 200 for r in replies[name] if r.received < blueprint_off), name
    # While refused, A1 is not hammered upstream: about one attempt per negative TTL per key.
    phase1 = admin.token_requests()
    a1_refusals = [
        e
        for e in phase1
        if e["seq"] <= revoked_seq
        and e["status"] != 200
        and A1 in ((e["client_id"] or "").lower(), (e["fmi_path"] or "").lower())
    ]
    a1_requests = sum(1 for n in ("a1-graph", "a1-demo") for r in replies[n] if agent_stopped <= r.sent)
    assert len(a1_refusals) <= 2 * ((2 * NEGATIVE_TTL + 1) / NEGATIVE_TTL + 1), a1_refusals
    assert a1_requests > 5 * len(a1_refusals)

    # Phase 2: disabling the blueprint stopped every remaining key at its next refresh.
    _check_revoked_at_refresh(replies["a2-graph"], blueprint_off, enabled)
    _check_revoked_at_refresh(replies["blueprint"], blueprint_off, enabled)

    # Re-enabled: requests reach the authority again (no client-side replay of the 400s).
    after = admin.token_requests(enabled_seq)
    assert select(after, leg="app", client_id=A1, status=200)
    assert select(after, leg="blueprint_app", status=200)
    # Each revocation was logged with its cause, the identity and the home tenant.
    revoked = [r.getMessage() for r in caplog.records if "revoking the cached tokens" in r.getMessage()]
    agent_line = f"agent identity {A1} in tenant {demo.TENANT_ID}: Entra answered AADSTS7000112 (disabled)"
    blueprint_line = f"blueprint {demo.BLUEPRINT_APP_ID} in tenant {demo.TENANT_ID}: Entra answered AADSTS7000112"
    assert any(agent_line in m for m in revoked) and any(blueprint_line in m for m in revoked), revoked
    assert all(r.levelname == "WARNING" for r in caplog.records if "revoking the cached tokens" in r.getMessage())


async def _revocations(session: aiohttp.ClientSession, ops_url: str | None) -> dict[tuple[str, str], float]:
    assert ops_url is not None
    async with session.get(ops_url + "/metrics") as resp:
        text = await resp.text()
    pattern = re.compile(r'^agent_token_broker_identity_revocations_total\{cause="(\w+)",identity="(\w+)"\} (\S+)$', re.M)
    return {(identity, cause): float(v) for cause, identity, v in pattern.findall(text)}


async def test_a_blueprint_disabled_in_one_tenant_is_revoked_in_that_tenant_only(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    """Revocation tags carry the tenant: the blueprint's service principal disabled in tenant X
    revokes its tokens for X (the refused key and its siblings there, each answering the
    identity's refusal from memory) and leaves its home-tenant tokens cached. The revocation
    is logged at WARNING with its cause and counted."""
    admin.install_blueprint(demo.BLUEPRINT_APP_ID, demo.OTHER_TENANT_ID)
    other = f"optionsOverride.AcquireTokenOptions.Tenant={demo.OTHER_TENANT_ID}"
    async with (
        broker_factory(
            Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated="true",
            Broker__Cache__NegativeTtlSeconds="120",
        ) as broker,
        client_session() as session,
    ):
        api = broker.api_urls[0]
        home = {"graph": api + f"{UNAUTH}/graph", "demo": api + f"{UNAUTH}/demo", "a1": api + app_path(A1)}
        away = {"graph": api + f"{UNAUTH}/graph?{other}", "demo": api + f"{UNAUTH}/demo?{other}"}
        served = {url: await fetch(session, url) for url in (*home.values(), *away.values())}
        assert all(r.status == 200 for r in served.values()), {u: r.body for u, r in served.items()}
        assert served[away["graph"]].claims["tid"] == demo.OTHER_TENANT_ID
        assert await _revocations(session, broker.ops_url) == {
            (i, c): 0.0 for i in ("agent", "blueprint", "other")
            for c in ("disabled", "not_found", "credential_rejected", "other")
        }  # fmt: skip

        admin.disable_blueprint(demo.BLUEPRINT_APP_ID, tenant=demo.OTHER_TENANT_ID)
        refused = await fetch(session, away["graph"] + "&optionsOverride.AcquireTokenOptions.ForceRefresh=true")
        assert refused.status == 401 and refused.body["errorCode"] == "AADSTS7000112", refused.body
        seq = admin.last_seq()
        sibling = await fetch(session, away["demo"])  # revoked with it, answered from memory
        assert sibling.status == 401 and sibling.body["errorCode"] == "AADSTS7000112", sibling.body
        assert demo.BLUEPRINT_APP_ID in sibling.body["detail"] and "correlationId" not in sibling.body
        for url in home.values():  # the home tenant's tokens: the same cached tokens
            again = await fetch(session, url)
            assert again.status == 200 and again.token == served[url].token, again.body
        assert admin.token_requests(seq) == []
        counted = await _revocations(session, broker.ops_url)
    assert counted[("blueprint", "disabled")] == 1 and sum(counted.values()) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "revoking" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert all(s in warnings[0] for s in (demo.BLUEPRINT_APP_ID, demo.OTHER_TENANT_ID, "AADSTS7000112", "disabled"))
    assert "eyJ" not in warnings[0]
