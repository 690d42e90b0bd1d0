"""Caller identity and per-caller policy over real sockets: clients running as other uids reach the
broker over TCP loopback and a Unix socket; each gets its own entry's policy, a uid no entry names
is refused under RequireMatch, and the audit lines name the right uid (and pid on the Unix socket)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.caller_clients import client_dir, run_as, share_socket
from tests.integration.conftest import BrokerFactory, make_settings

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
AGENT_UID, SANDBOX_UID, STRANGER_UID = 10010, 10020, 10030
PATH = "/AuthorizationHeaderUnauthenticated/graph?AgentIdentity="
CALLERS = {
    "Broker__Callers__agent__Uid": str(AGENT_UID),
    "Broker__Callers__agent__AllowedAgentIdentities__0": A1,
    "Broker__Callers__sandbox__Uid": str(SANDBOX_UID),
    "Broker__Callers__RequireMatch": "true",
}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tcp(broker: RunningBroker) -> str:
    return broker.api_urls[0].removeprefix("http://")


async def test_each_uid_gets_its_own_policy_over_tcp_and_the_unix_socket(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    with client_dir() as shared:
        sock, audit = shared / "api.sock", shared / "audit.jsonl"
        env = {**CALLERS, "Broker__Listen": f"127.0.0.1:0;unix:{sock}", "Broker__Audit__File": str(audit)}
        async with broker_factory(**env) as broker:
            share_socket(sock)
            results: dict[tuple[str, int], tuple[int, list[dict[str, Any]]]] = {}
            for target in (_tcp(broker), f"unix:{sock}"):
                for uid in (AGENT_UID, SANDBOX_UID, STRANGER_UID):
                    # its agent twice (a miss, then a hit on the same connection), then another agent
                    results[(target[:4], uid)] = await run_as(uid, shared, target, PATH + A1, PATH + A1, PATH + A2)
        lines = _lines(audit)  # the broker closed: the last hit window is written

    for (kind, uid), (_pid, answers) in results.items():
        statuses = [a["status"] for a in answers]
        if uid == AGENT_UID:
            assert statuses == [200, 200, 403], (kind, answers)
            assert answers[0]["body"]["authorizationHeader"].startswith("Bearer ")
            refusal = answers[2]["body"]
            assert refusal["title"] == f"caller not allowed: uid {AGENT_UID}"
            assert "Broker__Callers__agent" in refusal["detail"]
        else:
            assert statuses == [403, 403, 403], (kind, answers)
            for answer in answers:
                assert answer["body"]["type"].endswith("caller-not-allowed")
                assert answer["body"]["title"] == f"caller not allowed: uid {uid}"
            detail = answers[0]["body"]["detail"]
            assert ("Broker__Callers__sandbox" in detail) == (uid == SANDBOX_UID), detail
            assert ("matches no Broker__Callers entry" in detail) == (uid == STRANGER_UID), detail

    tokens = [line for line in lines if line["event"] == "token"]
    hits = [line for line in lines if line["event"] == "hits"]
    for (kind, uid), (pid, _answers) in results.items():
        transport = "tcp" if kind != "unix" else "unix"
        mine = [t for t in tokens if t["caller"]["uid"] == uid and t["caller"]["transport"] == transport]
        for line in mine:
            if transport == "unix":
                assert line["caller"]["pid"] == pid and line["caller"]["gid"] == uid and line["caller"]["peer"] == "unix"
            else:
                assert line["caller"]["pid"] is None and line["caller"]["peer"].startswith("127.0.0.1:")
        outcomes = sorted((t["agent"], t["outcome"]["status"], t["outcome"]["problem"]) for t in mine)
        if uid == AGENT_UID:
            name = "agent"
            expected = sorted([(A1, 200, None), (A2, 403, "caller-not-allowed")])
            if transport == "unix":  # the TCP client warmed A1's token: a hit here
                expected = [(A2, 403, "caller-not-allowed")]
        else:
            name = "sandbox" if uid == SANDBOX_UID else "other"
            # the sandbox entry is known: refused after the decision (its agent is recorded); an
            # unmatched caller under RequireMatch is refused before any decision (no agent)
            agent = (lambda a: a) if uid == SANDBOX_UID else (lambda a: None)
            expected = sorted([(agent(A1), 403, "caller-not-allowed")] * 2 + [(agent(A2), 403, "caller-not-allowed")])
        assert outcomes == expected, (kind, uid, outcomes)
        assert all(t["caller"]["name"] == name for t in mine)
    agent_hits = {h["caller"]["uid"]: h["count"] for h in hits if h["agent"] == A1}
    assert agent_hits == {AGENT_UID: 3}, hits  # one hit over TCP, two over the Unix socket


async def test_a_reload_applies_new_caller_policy_to_open_connections(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, emulator: EmulatorServer
) -> None:
    """Broker__Callers is live: after Runtime.apply_settings (what SIGHUP does), a kept-alive
    connection's caller is matched against the new table on its next request."""
    path = PATH + A1
    async with broker_factory() as broker, aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1)
    ) as http:
        url = broker.api_urls[0] + path
        async with http.get(url) as resp:
            assert resp.status == 200
        report = broker.runtime.apply_settings(make_settings(
            emulator, Broker__Callers__agent__Uid=str(AGENT_UID), Broker__Callers__RequireMatch="true"
        ))  # fmt: skip
        assert "Broker__Callers__RequireMatch" in " ".join(report.applied), report
        async with http.get(url) as resp:  # the same connection (limit=1, keep-alive)
            body = await resp.json()
            assert resp.status == 403 and body["title"] == f"caller not allowed: uid {os.getuid()}", body
        broker.runtime.apply_settings(make_settings(emulator))
        async with http.get(url) as resp:
            assert resp.status == 200
