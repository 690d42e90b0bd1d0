"""The caller of a request, decided once per connection.

:func:`caller_context` finds the connection's :class:`CallerContext` (made on its first token
request: ``SO_PEERCRED`` or the socket-table lookup of :mod:`agent_token_broker.callers`), so
later requests on a kept-alive connection pay a dict lookup, never a kernel query. The context
also remembers which ``Broker__Callers`` entry the caller matched, per compiled caller table
(a reload compiles a new table, so the match is decided again).

This is the one place that ties a caller to the request layer. The API front's connections
(:class:`agent_token_broker.api.protocol.Connection`) hold their :class:`CallerContext`
themselves; a connection of another protocol (e.g. aiohttp's test server) finds it by its
transport here.
"""

from __future__ import annotations

from typing import Any

from agent_token_broker.api.caller_policy import OTHER, CallerRule, CallerTable
from agent_token_broker.audit.record import HitKey
from agent_token_broker.callers import CallerIdentity
from agent_token_broker.callers.identity import identify_transport


class CallerContext:
    """One connection's caller: its identity and the entry it matched in ``table``."""

    __slots__ = ("__weakref__", "allowed", "hit_key", "identity", "label", "rule", "table")

    def __init__(self, identity: CallerIdentity) -> None:
        self.identity = identity
        self.rule: CallerRule | None = None
        self.table: CallerTable | None = None
        self.label = OTHER
        # The last decision this caller was allowed under ``table``, and its audit hit key: a
        # kept-alive connection repeating its request skips the checks (TokenGate.token's hot path).
        self.allowed: object = None
        self.hit_key: HitKey | None = None


def caller_context(request: Any) -> CallerContext | None:
    """The caller of ``request``'s connection (None when the connection is gone).

    Kept on the connection (the API front's :class:`~agent_token_broker.api.protocol.Connection`),
    so it is looked up once per connection. A request served by any other protocol has no place to
    keep it and gets a fresh lookup: correct, never shared through module-level state."""
    transport = request.transport
    if transport is None:
        return None
    connection = getattr(request.protocol, "connection", None)  # the API front's ApiProtocol
    if connection is None:
        return CallerContext(identify_transport(transport))
    own: CallerContext | None = connection.caller_context
    if own is None:
        own = connection.caller_context = CallerContext(identify_transport(transport))
    return own
