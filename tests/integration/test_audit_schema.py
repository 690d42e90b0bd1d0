"""The audit schema of docs/audit.md against the lines a real broker writes for every token
route (the header routes, /DownstreamApi, /DownstreamApiUnauthenticated, /msi/token), every flow
(app, blueprint app, OBO, agent OBO, agent user by object id and by UPN) and every outcome
(issued, hit, aggregated hits, policy refusal, caller refusal, Entra refusal, remembered
refusal, authority unavailable, invalid bearer token)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.downstream_server import Downstream, api_keys, call
from tests.integration.helpers import get

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
UNKNOWN_AGENT = "0badc0de-0000-4000-8000-000000000000"
MSI_SECRET = "an-msi-secret-of-the-audit-test"
UNAUTH = "/AuthorizationHeaderUnauthenticated/graph"
TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "array of strings": (list,),
}


def documented() -> dict[str, dict[str, tuple[tuple[type, ...], bool]]]:
    """event -> field -> (types, nullable), from the tables of docs/audit.md."""
    tables: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {}
    event = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r'### `"event": "(\w+)"`', line)
        if heading:
            event = heading.group(1)
            tables[event] = {}
            continue
        row = re.match(r"\| `([\w.]+)` \| ([\w ]+) \|", line)
        if event is not None and row:
            kind = row.group(2).strip()
            nullable = kind.endswith(" or null")
            tables[event][row.group(1)] = (TYPES[kind.removesuffix(" or null")], nullable)
    assert set(tables) == {"token", "hits"} and len(tables["token"]) > 20, tables.keys()
    return tables


def flatten(line: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in line.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def check_line(line: dict[str, Any], schema: dict[str, dict[str, tuple[tuple[type, ...], bool]]]) -> None:
    fields = schema[line["event"]]
    flat = flatten(line)
    objects = {name.split(".")[0] for name in fields if "." in name}
    for name, value in flat.items():
        if name in objects:
            assert value is None and name == "user", f"{name} must be an object ({line})"
            continue
        assert name in fields, f"{name} is not documented ({line})"
        types, nullable = fields[name]
        assert (value is None and nullable) or (isinstance(value, types) and not isinstance(value, bool)), (name, value)
    optional = {"user.upn"}  # present only with IncludeUpn and a UPN
    for name in fields:
        parent = name.split(".")[0]
        if name in optional or (parent in objects and line.get(parent) is None):
            continue
        assert name in flat, f"{name} is missing ({line})"


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines() if text.strip()]


async def test_every_flow_and_outcome_matches_the_documented_schema(
    broker_factory: BrokerFactory,
    admin: EmulatorAdmin,
    http: aiohttp.ClientSession,
    downstream: Downstream,
    tmp_path: Path,
) -> None:
    schema = documented()
    user = admin.user_token(demo.DEMO_USER_UPN)
    every, aggregated = tmp_path / "every.jsonl", tmp_path / "aggregate.jsonl"
    msi = {
        "Broker__ManagedIdentityEndpoint__Secret": MSI_SECRET,
        "Broker__ManagedIdentityEndpoint__DefaultAgentIdentity": A2,
    }
    # the test process is root: an entry for uid 0 that may not get OBO tokens
    callers = {"Broker__Callers__root__Uid": "0", "Broker__Callers__root__AllowedFlows__0": "app",
               "Broker__Callers__root__AllowedFlows__1": "agent-user"}  # fmt: skip
    async with broker_factory(
        Broker__Audit__File=str(every), Broker__Audit__Hits="every", Broker__Audit__IncludeUpn="true",
        Broker__AllowedAgentIdentities__0=A1, Broker__AllowedAgentIdentities__1=A2,
        Broker__AllowedAgentIdentities__2=UNKNOWN_AGENT, **msi, **api_keys(downstream),
    ) as broker:  # fmt: skip
        expect = [
            (f"{UNAUTH}?AgentIdentity={A1}", None, 200),  # agent app, miss
            (f"{UNAUTH}?AgentIdentity={A1}", None, 200),  # hit
            (UNAUTH, None, 200),  # blueprint app
            (f"{UNAUTH}?AgentIdentity={A1}&AgentUserId={demo.AGENT_USER_OID}", None, 200),
            (f"{UNAUTH}?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}", None, 200),
            (f"/AuthorizationHeader/graph?AgentIdentity={A1}", user, 200),  # agent OBO
            ("/AuthorizationHeader/graph", user, 200),  # blueprint OBO
            (f"{UNAUTH}?AgentIdentity=dddddddd-0000-4000-8000-00000000000d", None, 403),  # policy
            (f"{UNAUTH}?AgentIdentity={UNKNOWN_AGENT}", None, 401),  # Entra refuses
            (f"{UNAUTH}?AgentIdentity={UNKNOWN_AGENT}", None, 401),  # remembered refusal
            (f"/AuthorizationHeader/graph?AgentIdentity={A1}", user[:-6] + "AAAAAA", 401),  # bad bearer
        ]
        for path, token, status in expect:
            got, body, _ = await get(http, broker, path, token=token)
            assert got == status, (path, body)
        # The /DownstreamApi routes go through the same gate ("down" asks for Graph's scope).
        for path, token, status in [
            (f"/DownstreamApiUnauthenticated/down?AgentIdentity={A2}", None, 200),  # agent app, miss
            (f"/DownstreamApi/down?AgentIdentity={A1}", user, 200),  # agent OBO, hit
            (f"/DownstreamApiUnauthenticated/down?AgentIdentity={UNKNOWN_AGENT}", None, 401),  # remembered
            (f"/DownstreamApi/down?AgentIdentity={A1}", user[:-6] + "AAAAAA", 401),  # bad bearer
        ]:
            got, body = await call(http, broker, path, token=token)
            assert got == status, (path, body)
        got, body, _ = await get(
            http, broker, f"/msi/token?api-version=2019-08-01&resource={demo.GRAPH_RESOURCE}", headers={"X-IDENTITY-HEADER": MSI_SECRET}
        )
        assert got == 200, body
        admin.fault(target="token", mode="status", status=503)
        got, body, _ = await get(http, broker, f"/AuthorizationHeaderUnauthenticated/demo?AgentIdentity={A2}")
        assert got == 503, body
        admin.clear_faults()
    async with broker_factory(Broker__Audit__File=str(aggregated), **callers) as broker:
        for _ in range(3):
            got, _, _ = await get(http, broker, f"{UNAUTH}?AgentIdentity={A1}")
            assert got == 200
        got, body, _ = await get(http, broker, f"/AuthorizationHeader/graph?AgentIdentity={A1}", token=user)
        assert got == 403 and body["title"] == "caller not allowed: uid 0", body

    lines = read(every) + read(aggregated)
    for line in lines:
        check_line(line, schema)
    seen = {(line.get("token_flow"), line.get("cache"), line.get("outcome", {}).get("problem")) for line in lines}
    for wanted in [
        ("agent_app", "miss", None), ("agent_app", "hit", None), ("blueprint_app", "miss", None),
        ("agent_user", "miss", None), ("agent_obo", "miss", None), ("blueprint_obo", "miss", None),
        (None, "none", "agent-not-allowed"), ("agent_app", "miss", "token-refused"),
        ("agent_app", "negative", "token-refused"), (None, "none", "invalid-token"),
        ("agent_app", "miss", "authority-unavailable"), ("agent_obo", "none", "caller-not-allowed"),
        (None, "hit", None),  # the aggregated hits line
    ]:  # fmt: skip
        assert wanted in seen, (wanted, sorted(map(str, seen)))
    by_user = [line["user"] for line in lines if line.get("token_flow") == "agent_user"]
    assert {"kind": "agent-user", "oid": demo.AGENT_USER_OID} in by_user
    assert {"kind": "agent-user", "oid": None, "upn": demo.AGENT_USER_UPN} in by_user
    obo = next(line for line in lines if line.get("token_flow") == "blueprint_obo")
    assert obo["user"]["kind"] == "obo" and obo["user"]["oid"]
    refused = next(line for line in lines if line.get("outcome", {}).get("problem") == "token-refused")
    assert refused["outcome"]["error_code"] and refused["outcome"]["correlation_id"]
    msi_line = next(line for line in lines if line.get("route") == "/msi/token")
    assert msi_line["api"] is None and msi_line["flow"] == "app" and msi_line["agent"] == A2.lower()
    downstream_lines = {
        (line["route"], line["api"], line["token_flow"], line["cache"], line["outcome"]["problem"])
        for line in lines
        if line.get("route", "").startswith("/DownstreamApi")
    }
    assert downstream_lines == {
        ("/DownstreamApiUnauthenticated/{api}", "down", "agent_app", "miss", None),
        ("/DownstreamApi/{api}", "down", "agent_obo", "hit", None),
        ("/DownstreamApiUnauthenticated/{api}", "down", "agent_app", "negative", "token-refused"),
        ("/DownstreamApi/{api}", "down", None, "none", "invalid-token"),
    }, downstream_lines
    hits = [line for line in lines if line["event"] == "hits"]
    assert [(h["caller"], h["count"]) for h in hits] == [({"name": "root", "uid": 0}, 2)], hits
