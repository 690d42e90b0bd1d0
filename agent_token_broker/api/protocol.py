"""The API listener's connections: what is known per connection, and HTTP-level errors as problem+json.

:class:`ApiProtocol` is aiohttp's public per-connection protocol (``web.RequestHandler``, built
with the same keyword arguments as the ``web.Server`` it serves) with two additions:

* a :class:`Connection`, made once in ``connection_made``: the peer (its address, or the Unix
  socket peer's uid), the caller key for per-caller limits, the local address for the ``Host``
  check, and remembered verdicts (caller allowed, last ``Host`` value) tied to the settings they
  were decided under, so a reload decides them again; on its first token request, the caller's
  identity (:class:`~agent_token_broker.api.caller_context.CallerContext`: uid/gid/pid from
  ``SO_PEERCRED`` or the socket table). Requests reach it as ``request.protocol.connection``.
* HTTP-level errors (malformed request line, header too long, bad chunking...): aiohttp answers
  those itself, before any handler, with text/plain and a log line that can quote the offending
  bytes (a header value, a token). :meth:`ApiProtocol.handle_error` answers problem+json and
  logs only the error's class name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from agent_token_broker.api.guards import IPAddress, caller_allowed, parse_peer_ip, unix_peer
from agent_token_broker.api.problems import problem_response
from agent_token_broker.settings.security import IPNetwork

if TYPE_CHECKING:
    from agent_token_broker.api.caller_context import CallerContext

log = logging.getLogger("agent_token_broker.api")


class Connection:
    """One API connection, as decided when it opened (see the module docstring)."""

    __slots__ = ("address", "caller", "caller_context", "host_for", "host_seen", "local", "seen", "unix", "verdict",
                 "verdict_for")  # fmt: skip

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.unix = unix_peer(transport.get_extra_info("socket"))
        self.address: IPAddress | None = None
        self.local: str | None = None
        if self.unix is not None:
            self.caller = self.unix
        else:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and peer:
                self.address = parse_peer_ip(str(peer[0]))
            self.caller = str(self.address) if self.address is not None else "unknown"
            sockname = transport.get_extra_info("sockname")
            if isinstance(sockname, tuple) and sockname:
                self.local = str(sockname[0]).split("%", 1)[0]
        # Verdicts remembered for the settings object they were decided under (identity).
        self.verdict_for: object = None
        self.verdict = False
        # The last Host value allowed on this connection, and the settings it was allowed under.
        self.host_for: object = None
        self.host_seen: str | None = None
        # What the front worked out from the last request target served on this connection (clients
        # repeat theirs): pure functions of the target, kept by the front (see ApiFront.handle).
        self.seen: Any = None
        # The caller's identity (uid, gid, pid) and the Broker__Callers entry it matched: made on the
        # connection's first token request (api/caller_context.py), then kept with the connection.
        self.caller_context: CallerContext | None = None

    def allowed(self, policy: object, networks: tuple[IPNetwork, ...]) -> bool:
        """Loopback and Unix-socket peers always; others only inside ``networks`` (decided once per
        ``policy``, the settings-derived object ``networks`` comes from)."""
        if self.verdict_for is not policy:
            self.verdict = self.unix is not None or caller_allowed(self.address, networks)
            self.verdict_for = policy
        return self.verdict


class ApiProtocol(web.RequestHandler):
    """aiohttp's connection handler with a :class:`Connection` and problem+json HTTP errors."""

    __slots__ = ("connection",)

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.connection: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connection = Connection(transport)
        super().connection_made(transport)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "error"
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error page")
        if isinstance(exc, LineTooLong):
            status, detail = 431, "the request line or a request header is too long"
        elif isinstance(exc, HttpProcessingError) and "too many headers" in str(exc).lower():
            status, detail = 431, "the request has too many headers"
        elif status >= 500 and not isinstance(exc, HttpProcessingError):
            log.error("unexpected error while handling a request: %s", kind)
            detail = "An unexpected error occurred."
        else:
            status = status if 400 <= status < 500 else 400
            detail = "the request is not valid HTTP/1.1"
        log.debug("refused a malformed request: %s (HTTP %d)", kind, status)
        response = problem_response(status, detail, slug="headers-too-large" if status == 431 else "bad-http")
        response.force_close()
        return response


def protocol_factory(server: web.Server, **kwargs: Any) -> Callable[[], ApiProtocol]:
    """Connections of ``server`` (a ``web.Server`` built with the same ``kwargs``) as :class:`ApiProtocol`."""
    loop = asyncio.get_running_loop()
    return lambda: ApiProtocol(server, loop=loop, **kwargs)
