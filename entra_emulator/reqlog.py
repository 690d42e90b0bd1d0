"""The emulator's request log (``GET /_emulator/log``). Never holds secrets,
assertions or tokens: only ids, legs, statuses and error codes."""

from __future__ import annotations

import collections
import time
from typing import Any

MAX_ENTRIES = 50_000


class RequestLog:
    def __init__(self) -> None:
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_ENTRIES)
        self._counts: collections.Counter[str] = collections.Counter()
        self._seq = 0

    def record(
        self,
        endpoint: str,
        leg: str,
        client_id: str | None,
        fmi_path: str | None,
        status: int,
        error_code: int | None = None,
        fault: str | None = None,
        claims: str | None = None,
    ) -> int:
        self._seq += 1
        entry: dict[str, Any] = {
            "seq": self._seq,
            "time": time.time(),
            "endpoint": endpoint,
            "leg": leg,
            "client_id": client_id,
            "fmi_path": fmi_path,
            "status": status,
            "error_code": error_code,
            "fault": fault,
        }
        if claims is not None:  # a claims challenge is not a secret; tests check it was sent
            entry["claims"] = claims
        self._entries.append(entry)
        self._counts[leg] += 1
        return self._seq

    def snapshot(self, since: int | None = None) -> dict[str, Any]:
        entries = [dict(e) for e in self._entries if since is None or e["seq"] > since]
        return {"requests": entries, "counts": dict(self._counts), "last_seq": self._seq}

    def clear(self) -> None:
        self._entries.clear()
        self._counts.clear()
