"""Secrets hygiene: every flow at DEBUG (broker, MSAL, urllib3, aiohttp loggers) leaves no token,
user assertion, T1/T2 exchange token or client secret in the logs, error bodies or metrics."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import get

A1 = demo.AGENT_1_ID
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
LOGGERS = ("", "agent_token_broker", "msal", "urllib3", "requests", "aiohttp", "asyncio")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name}: {text}")


@pytest.fixture
def debug_logs() -> Iterator[_Capture]:
    capture = _Capture()
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    root = logging.getLogger()
    root.addHandler(capture)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def test_no_secret_material_in_debug_logs_for_any_flow(
    broker_factory: BrokerFactory,
    http: aiohttp.ClientSession,
    admin: EmulatorAdmin,
    debug_logs: _Capture,
    tmp_path: Path,
) -> None:
    user = admin.user_token(demo.DEMO_USER_UPN)
    secrets: list[str] = [demo.BLUEPRINT_SECRET, user]
    unauth = "/AuthorizationHeaderUnauthenticated/graph"
    flows = [
        (f"{unauth}?AgentIdentity={A1}", None),
        (f"{unauth}?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}", None),
        (f"{unauth}?AgentIdentity={A1}&AgentUserId={demo.AGENT_USER_OID}", None),
        (f"{unauth}", None),
        (f"/AuthorizationHeader/graph?AgentIdentity={A1}", user),
        ("/AuthorizationHeader/graph", user),
        (f"/AuthorizationHeader/graph?AgentIdentity={A1}&optionsOverride.RequestAppToken=true", user),
        ("/Validate", user),
        # failures: Entra refusal, bad inbound token, throttling (each logs something)
        (f"{unauth}?AgentIdentity=0badc0de-0000-4000-8000-000000000000", None),
        (f"/AuthorizationHeader/graph?AgentIdentity={A1}", user[:-6] + "AAAAAA"),
    ]
    audit_file = tmp_path / "audit.jsonl"
    # the audit trail too: every decision, hits one line each
    audit = {"Broker__Audit__File": str(audit_file), "Broker__Audit__Hits": "every", "Broker__Audit__IncludeUpn": "true"}
    async with broker_factory(Logging__LogLevel__Default="Debug", **audit) as broker:
        bodies: list[str] = []
        for path, token in flows:
            _status, body, _ = await get(http, broker, path, token=token)
            bodies.append(str(body))
            header = body.get("authorizationHeader") if isinstance(body, dict) else None
            if header:
                secrets.append(header.split(" ", 1)[1])
        admin.fault(target="token", mode="status", status=503)
        _s, body, _ = await get(http, broker, f"{unauth}?AgentIdentity={demo.AGENT_2_ID}")
        bodies.append(str(body))
        admin.clear_faults()
        async with http.get(broker.ops_url + "/metrics") as resp:  # type: ignore[operator]
            metrics = await resp.text()
    issued = len(secrets) - 2
    assert issued >= 6, "the flows should have issued tokens"
    audit_lines = audit_file.read_text(encoding="utf-8").splitlines()
    assert len(audit_lines) >= len(flows), "every token decision is audited"
    logs = "\n".join(debug_logs.lines + audit_lines)
    assert len(debug_logs.lines) > 20, "DEBUG capture did not work"
    for secret in secrets:
        assert secret not in logs
        assert secret not in metrics
    # T1/T2 and any other JWT never appear, whatever their origin.
    assert not JWT_SHAPED.search(logs), JWT_SHAPED.search(logs)
    assert not JWT_SHAPED.search(metrics)
    for text in bodies:
        if "authorizationHeader" not in text and "claims" not in text:
            assert not JWT_SHAPED.search(text), text
            assert demo.BLUEPRINT_SECRET not in text
