"""What the API front records per request: request ids, request metrics and a debug access log line.

* Request id: an inbound ``X-Request-Id`` is honoured when it is a short, sane
  token (letters, digits, ``.-_:``, at most 64 characters); otherwise one is
  generated. It is echoed in the response's ``X-Request-Id`` and set in
  :data:`agent_token_broker.logs.REQUEST_ID` so every log record of the request carries it.
* Metrics: requests by route template and status, latency by route template.
  Unmatched paths count as ``route="unmatched"``; a request whose client went
  away before the answer counts as status 499. Children are bound once per
  route (see :meth:`agent_token_broker.metrics.BrokerMetrics.route`).
"""

from __future__ import annotations

import itertools
import logging
import os
import re

log = logging.getLogger("agent_token_broker.access")
REQUEST_ID_HEADER = "X-Request-Id"
CLIENT_CLOSED = 499
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_PREFIX = os.urandom(5).hex() + "-"
_counter = itertools.count(1)


def new_request_id() -> str:
    """A process-unique request id: a random per-process prefix and a counter (cheap)."""
    return _PREFIX + format(next(_counter), "x")


def request_id_for(inbound: str | None) -> str:
    """The inbound id when it is sane, else a new one."""
    if inbound is not None and _SANE_ID.fullmatch(inbound):
        return inbound
    return new_request_id()


def access_line(method: str, route: str, status: int, elapsed: float, request_id: str) -> None:
    """The DEBUG access line of one API request (call only when DEBUG is enabled)."""
    log.debug(
        "%s %s -> %d",
        method,
        route,
        status,
        extra={"route": route, "status": status, "duration_ms": round(elapsed * 1000, 3), "request_id": request_id},
    )
