"""Structured logs at DEBUG for every flow (and failures): JSON lines with request and correlation ids,
and never a token, assertion or secret."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from agent_token_broker.logs import REQUEST_ID, redact
from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import get
from tests.support import Captured, broker_logs

A1 = demo.AGENT_1_ID
UNAUTH = "/AuthorizationHeaderUnauthenticated"


@pytest.fixture
def logs() -> Iterator[Captured]:
    with broker_logs() as captured:
        yield captured


async def drive_every_flow(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> list[str]:
    """Every token flow, a refusal, an invalid inbound token and an outage; returns the secrets seen."""
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    secrets = [demo.BLUEPRINT_SECRET, user_token]
    paths: list[tuple[str, str | None]] = [
        (f"{UNAUTH}/graph?AgentIdentity={A1}", None),  # agent app (T1 + app)
        (f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}", None),  # T2 + user_fic
        (f"{UNAUTH}/graph", None),  # blueprint app
        (f"/AuthorizationHeader/graph?AgentIdentity={A1}", user_token),  # agent OBO
        ("/AuthorizationHeader/graph", user_token),  # blueprint OBO
        ("/Validate", user_token),
        (f"{UNAUTH}/graph?AgentIdentity=0badc0de-0000-4000-8000-000000000000", None),  # refused
        ("/Validate", user_token[:-4] + "AAAA"),  # bad signature
    ]
    for path, token in paths:
        status, body, _ = await get(http, broker, path, token=token)
        if status == 200 and "authorizationHeader" in body:
            secrets.append(body["authorizationHeader"].split(" ", 1)[1])
        assert status in (200, 401), (path, status, body)
    admin.fault(target="token", mode="status", status=503)
    status, _, _ = await get(http, broker, f"{UNAUTH}/demo?AgentIdentity={demo.AGENT_2_ID}")
    assert status == 503
    admin.clear_faults()
    # Tokens the broker holds internally (T1, T2) must not appear either.
    cache = broker.runtime.cache
    for key in cache.keys():
        held = cache.current(key)
        if held is not None:
            secrets.append(held.value)
    return secrets


async def test_logs_never_contain_tokens_assertions_or_secrets(
    broker_factory: BrokerFactory,
    http: aiohttp.ClientSession,
    admin: EmulatorAdmin,
    logs: Captured,
) -> None:
    async with broker_factory(**{"Logging__LogLevel__Default": "Debug"}) as broker:
        secrets = await drive_every_flow(broker, http, admin)
    assert len(secrets) >= 8
    formatted = logs.stream.getvalue()
    raw = "\n".join(logs.raw)
    assert formatted and raw
    for secret in secrets:
        for part in (secret, secret[-40:]):  # also the signature alone
            assert part not in formatted
            assert part not in raw
    assert "eyJ" not in raw and "eyJ" not in formatted  # no JWT (token, assertion) at all
    assert demo.BLUEPRINT_SECRET not in raw

    lines = logs.lines()
    access = [e for e in lines if e["logger"] == "agent_token_broker.access"]
    assert len(access) >= 9
    assert all(e["request_id"] and e["route"] and e["status"] for e in access)
    assert len({e["request_id"] for e in access}) == len(access)
    upstream = [e for e in lines if e["logger"] == "agent_token_broker.upstream"]
    legs = {e["leg"] for e in upstream}
    assert {"t1", "app", "t2", "user_fic", "obo", "blueprint_app", "blueprint_obo"} <= legs, legs
    # Entra correlation ids and the request that caused the upstream call are in the records.
    assert all(e.get("correlation_id") for e in upstream if e["outcome"] != "unreachable"), upstream
    assert all(e.get("request_id") for e in upstream), upstream
    refused = [e for e in upstream if e["outcome"] == "refused"]
    assert refused and refused[0]["level"] == "warning" and refused[0]["error_code"].startswith("AADSTS")
    failed = [e for e in upstream if e["outcome"] == "server_error"]
    assert failed and failed[0]["upstream_status"] == 503


async def test_request_id_is_in_every_record_of_a_request(
    broker: RunningBroker, http: aiohttp.ClientSession, logs: Captured
) -> None:
    status, _, headers = await get(
        http, broker, f"{UNAUTH}/graph?AgentIdentity={A1}", headers={"X-Request-Id": "req-42"}
    )
    assert status == 200 and headers["X-Request-Id"] == "req-42"
    mine = [e for e in logs.lines() if e.get("request_id") == "req-42"]
    assert {e["logger"] for e in mine} >= {"agent_token_broker.access", "agent_token_broker.upstream"}
    assert REQUEST_ID.get() is None  # nothing leaks into the test's own context


def test_redact_masks_jwt_shaped_text() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert redact(f"token {jwt} here") == "token <redacted-jwt> here"
    assert redact("no tokens") == "no tokens"
