"""Fault injection rules (``POST/DELETE /_emulator/faults``).

Modes:
- ``latency``: wait ``latency_ms`` then answer normally (stacks with one other fault);
- ``status``: answer ``status`` (429/500/503...) with an Entra-shaped JSON error, or
  a plain-text body when ``plain_text``; ``Retry-After`` when ``retry_after`` is set.
  The body's AADSTS code is ``error_code`` when given, else 90055 (tenant throttled) for
  429, 50196 (loop detected: how Entra throttles user flows, as ``invalid_grant`` with
  HTTP 400) for other 4xx and 50001 for 5xx; ``error`` overrides the OAuth error string;
- ``hang``: hold the request open, never answering, until the faults are cleared
  (the connection is then closed without a response) or the client gives up;
- ``reset``: abort the TCP connection with an RST (SO_LINGER 0), no response;
- ``outage``: close the connection immediately with a FIN and no response (what a
  client sees is a dropped connection, like a crashed server; a listening port
  cannot refuse per request).

``count`` = apply to the next N matching requests (null = until cleared);
``nth`` = only the Nth matching request from now. ``match`` filters on
client_id / leg / fmi_path, and ``has_claims`` ("true"/"false": the request carries a
``claims`` parameter, e.g. a claims challenge the authority will not satisfy).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

TARGETS = ("token", "mi", "discovery", "all")
MODES = ("latency", "status", "hang", "reset", "outage")
MATCH_KEYS = ("client_id", "leg", "fmi_path", "has_claims")


@dataclass
class Fault:
    id: str
    target: str
    mode: str
    latency_ms: int = 0
    status: int = 503
    retry_after: int | None = None
    plain_text: bool = False
    error_code: int | None = None
    error: str | None = None
    count: int | None = None
    nth: int | None = None
    match: dict[str, str] = field(default_factory=dict)
    seen: int = 0
    applied: int = 0

    def applies_to(self, target: str, attrs: dict[str, str | None]) -> bool:
        if self.target not in ("all", target):
            return False
        return all((attrs.get(k) or "").lower() == v.lower() for k, v in self.match.items())


_ids = itertools.count(1)


def parse_fault(body: dict[str, Any]) -> Fault:
    target, mode = body.get("target", "token"), body.get("mode")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    match = body.get("match") or {}
    if not isinstance(match, dict) or any(k not in MATCH_KEYS for k in match):
        raise ValueError(f"match keys must be among {MATCH_KEYS}")
    fault = Fault(
        id=f"fault-{next(_ids)}",
        target=target,
        mode=mode,
        latency_ms=int(body.get("latency_ms") or 0),
        status=int(body.get("status") or 503),
        retry_after=None if body.get("retry_after") is None else int(body["retry_after"]),
        plain_text=bool(body.get("plain_text", False)),
        error_code=None if body.get("error_code") is None else int(body["error_code"]),
        error=None if body.get("error") is None else str(body["error"]),
        count=None if body.get("count") is None else int(body["count"]),
        nth=None if body.get("nth") is None else int(body["nth"]),
        match={k: str(v) for k, v in match.items() if v is not None},
    )
    if fault.count is not None and fault.count <= 0:
        raise ValueError("count must be positive or null")
    if fault.nth is not None and fault.nth <= 0:
        raise ValueError("nth must be positive or null")
    if fault.mode == "status" and not 400 <= fault.status <= 599:
        raise ValueError("status must be an HTTP error status")
    if fault.error_code is not None and not 0 < fault.error_code < 10**8:
        raise ValueError("error_code must be an AADSTS number")
    if fault.error is not None and not fault.error.replace("_", "").isalpha():
        raise ValueError("error must be an OAuth error string (letters and '_')")
    return fault


class FaultTable:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._release: asyncio.Event | None = None

    def add(self, fault: Fault) -> str:
        self._faults.append(fault)
        return fault.id

    def active(self) -> list[dict[str, Any]]:
        return [dict(vars(f)) for f in self._faults]

    def clear(self) -> None:
        self._faults.clear()
        if self._release is not None:
            self._release.set()
            self._release = None

    def release_event(self) -> asyncio.Event:
        if self._release is None:
            self._release = asyncio.Event()
        return self._release

    def pick(self, target: str, attrs: dict[str, str | None]) -> list[Fault]:
        """Faults to apply to this request: any latency faults, then at most
        one terminal fault (status/hang/reset/outage), in creation order."""
        chosen: list[Fault] = []
        for fault in list(self._faults):
            if not fault.applies_to(target, attrs):
                continue
            if any(c.mode != "latency" for c in chosen) and fault.mode != "latency":
                continue
            fault.seen += 1
            if fault.nth is not None:
                if fault.seen == fault.nth:
                    self._faults.remove(fault)
                    chosen.append(fault)
                continue
            if fault.count is not None:
                fault.applied += 1
                if fault.applied >= fault.count:
                    self._faults.remove(fault)
            chosen.append(fault)
        return chosen
