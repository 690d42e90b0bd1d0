"""Audit records as pure functions: what one token decision (or a window of cache hits) writes.

The schema is documented field by field in docs/audit.md (``tests/unit/test_audit_record.py``
checks every flow and outcome against it). A record never holds a token, an assertion, a
secret or a claims value; a UPN only with ``Broker__Audit__IncludeUpn=true``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agent_token_broker.callers import CallerIdentity
from agent_token_broker.tokens import FLOW_KINDS, Flow, TokenRequest

SCHEMA_VERSION = 1
# What the cache did for the request (docs/audit.md): a fresh cached token, an acquisition this
# request started, one it joined, a token below its refresh margin served while Entra failed, a
# remembered failure, a forced or claims refresh, or nothing (refused before the cache).
CACHE_RESULTS = ("hit", "miss", "coalesced", "stale", "negative", "refresh", "none")


def timestamp(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, as the broker's log lines write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def caller_fields(identity: CallerIdentity | None, name: str) -> dict[str, Any]:
    """The ``caller`` object: entry name (or ``other``), transport, uid, gid, pid, peer."""
    if identity is None:
        return {"name": name, "transport": None, "uid": None, "gid": None, "pid": None, "peer": None}
    return {
        "name": name,
        "transport": identity.transport,
        "uid": identity.uid,
        "gid": identity.gid,
        "pid": identity.pid,
        "peer": identity.peer,
    }


def user_fields(request: TokenRequest | None, obo_user: str | None, include_upn: bool) -> dict[str, Any] | None:
    """The ``user`` object: the agent user or the OBO user, by object id; the UPN only when allowed."""
    if request is None:
        return None
    if request.flow is Flow.AGENT_USER:
        user: dict[str, Any] = {"kind": "agent-user", "oid": request.user_object_id}
        if request.username is not None and include_upn:
            user["upn"] = request.username
        return user
    if request.flow in (Flow.AGENT_OBO, Flow.BLUEPRINT_OBO):
        return {"kind": "obo", "oid": obo_user}
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a decision ended: HTTP status, problem type, AADSTS code and Entra correlation id."""

    status: int
    problem: str | None = None
    error_code: str | None = None
    correlation_id: str | None = None


def decision_record(
    *,
    at: float,
    request_id: str | None,
    trace_id: str | None,
    identity: CallerIdentity | None,
    caller: str,
    route: str,
    api: str | None,
    request: TokenRequest | None,
    obo_user: str | None,
    cache: str,
    outcome: Outcome,
    latency: float,
    include_upn: bool,
) -> dict[str, Any]:
    """One token decision (``"event": "token"``)."""
    return {
        "ts": timestamp(at),
        "v": SCHEMA_VERSION,
        "event": "token",
        "request_id": request_id,
        "trace_id": trace_id,
        "caller": caller_fields(identity, caller),
        "route": route,
        "api": api,
        "flow": FLOW_KINDS[request.flow] if request is not None else None,
        "token_flow": request.flow.value if request is not None else None,
        "agent": request.agent.lower() if request is not None and request.agent else None,
        "user": user_fields(request, obo_user, include_upn),
        "tenant": request.tenant if request is not None else None,
        "scopes": list(request.scopes) if request is not None else None,
        "cache": cache,
        "outcome": {
            "status": outcome.status,
            "problem": outcome.problem,
            "error_code": outcome.error_code,
            "correlation_id": outcome.correlation_id,
        },
        "latency_ms": round(latency * 1000, 3),
    }


HitKey = tuple[str, int | None, str | None, str | None, str]  # caller name, uid, agent, api, flow


def hit_key(caller: str, identity: CallerIdentity | None, request: TokenRequest, api: str | None) -> HitKey:
    """The aggregation key of a cache hit: (caller, uid, agent, API, flow)."""
    uid = identity.uid if identity is not None else None
    return caller, uid, request.agent, api, FLOW_KINDS[request.flow]


def hits_record(key: HitKey, count: int, *, since: float, until: float) -> dict[str, Any]:
    """``count`` cache hits of one (caller, agent, API, flow) in ``[since, until)`` (``"event": "hits"``)."""
    caller, uid, agent, api, flow = key
    return {
        "ts": timestamp(until),
        "v": SCHEMA_VERSION,
        "event": "hits",
        "caller": {"name": caller, "uid": uid},
        "api": api,
        "flow": flow,
        "agent": agent.lower() if agent else None,
        "count": count,
        "since": timestamp(since),
        "cache": "hit",
    }
