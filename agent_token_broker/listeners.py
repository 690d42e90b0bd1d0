"""Listening sockets and what every accepted connection is allowed to hold.

:func:`bind` opens a listener's sockets itself (before any aiohttp code runs), so a failure
names the configuration key and the address, an unresolvable host says so, and a Unix
socket path is handled with care: a path that is not a socket, or a socket some process
still answers on, is never replaced; a stale socket is; ours is removed on a clean stop.

:class:`ConnectionGuard` wraps the HTTP server's protocol factory (aiohttp's public
``web.Server`` / ``runner.server`` callable, so it serves a ``web.Application`` and a
low-level ``web.Server`` alike) and enforces, per connection:

* an idle timeout: a connection with no request in progress (just opened, or after a
  response) is closed after ``idle_timeout`` seconds;
* a header-read timeout: from the first byte of a request head to its blank line, at most
  ``header_timeout`` seconds, however slowly the bytes trickle (answered 408, then closed);
* connection caps: total, and per peer address (the ops listener);
* a file-descriptor reserve (the ops listener): new connections are refused while the
  process has fewer than :func:`fd_reserve` descriptors left, so a flood of connections to
  the ops port exhausts the ops listener, never the API listener.

The end of each response is learnt from aiohttp's public access-logger hook
(``access_log_class``); :meth:`ConnectionGuard.server_kwargs` gives the keyword arguments
to pass to ``web.AppRunner``/``web.Server`` for that, plus aiohttp's own
``keepalive_timeout`` (the same idle limit plus a second, as a backstop).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import resource
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from agent_token_broker.api.problems import problem_title
from agent_token_broker.settings import Listen

log = logging.getLogger("agent_token_broker.listeners")

_IDLE, _HEAD, _REQUEST = 0, 1, 2
_HEAD_END = b"\r\n\r\n"
FD_COUNT_CACHE_SECONDS = 0.5
WARN_EVERY_SECONDS = 60.0


class BindError(OSError):
    """A listener could not be opened; the message names the key and the address."""


# -- binding --------------------------------------------------------------------------------------


@dataclass
class BoundListener:
    """The open sockets of one configured listener."""

    key: str
    listen: Listen
    sockets: list[socket.socket]
    url: str
    _unix_identity: tuple[int, int] | None = None

    def remove_socket_file(self) -> None:
        """Remove our Unix socket file, unless something else has replaced it meanwhile."""
        path = self.listen.path
        if path is None or self._unix_identity is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._unix_identity:
                os.unlink(path)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _unix_socket_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # nobody listens: a stale socket left by a crash
    except OSError:
        return True  # e.g. a full backlog: someone is there
    finally:
        probe.close()
    return True


def _bind_unix(listen: Listen, key: str, mode: int, backlog: int) -> BoundListener:
    path = listen.path
    assert path is not None
    where = f"{key}=unix:{path}"
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise BindError(f"{where}: cannot inspect the path ({_reason(exc)})") from None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise BindError(f"{where}: the path exists and is not a socket; refusing to replace it")
        if _unix_socket_in_use(path):
            raise BindError(f"{where}: another process is listening on this socket; refusing to take it over")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        st = os.lstat(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(f"{where}: {_reason(exc)}") from None
    return BoundListener(key, listen, [sock], f"unix:{path}", (st.st_dev, st.st_ino))


async def bind(listen: Listen, key: str, *, unix_mode: int = 0o660, backlog: int = 1024) -> BoundListener:
    """Open the sockets of ``listen`` (configured under ``key``). :raises BindError:"""
    if listen.kind == "unix":
        return _bind_unix(listen, key, unix_mode, backlog)
    host, port = listen.host or "", listen.port or 0
    shown = f"[{host}]" if ":" in host else host
    where = f"{key}={shown}:{port}"
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"{where}: cannot resolve the host {host!r} ({_reason(exc)})") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                on = "" if address[0] == host else f" ({address[0]})"
                raise BindError(f"{where}: {_reason(exc)}{on}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    actual = sockets[0].getsockname()
    return BoundListener(key, listen, sockets, f"http://{shown}:{actual[1]}")


# -- per-connection guard ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout: float
    header_timeout: float
    max_connections: int | None = None
    max_connections_per_peer: int | None = None
    reserve_fds: bool = False


def fd_reserve(soft_limit: int) -> int:
    """Descriptors kept free for the API listener: a quarter of the limit, at least 64."""
    return max(64, soft_limit // 4)


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _peer(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return None  # a Unix socket
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return str(peer[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _canned(status: int, reason: str, detail: str, slug: str, extra: str = "") -> bytes:
    title = problem_title(status, slug)
    body = json.dumps(
        {"type": f"urn:agent-token-broker:problem:{slug}", "title": title, "status": status, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


_REQUEST_TIMEOUT = _canned(
    408, "Request Timeout", "the request headers did not arrive in time", "header-timeout"
)


REFUSALS = ("connections", "peer", "descriptors")  # why a new connection is refused (503)


@dataclass
class GuardStats:
    """Counts of what a guard refused or closed (metrics, logs and tests read them)."""

    refused: dict[str, int] = field(default_factory=dict)
    header_timeouts: int = 0
    idle_timeouts: int = 0

    def by_reason(self) -> dict[str, int]:
        """Every count by its ``reason`` label of ``agent_token_broker_connections_closed_total``."""
        return {
            **{reason: self.refused.get(reason, 0) for reason in REFUSALS},
            "header_timeout": self.header_timeouts,
            "idle_timeout": self.idle_timeouts,
        }


class ConnectionGuard:
    """Connection limits of one listener (API or ops); see the module docstring."""

    def __init__(self, name: str, limits: ConnectionLimits) -> None:
        self.name = name
        self.limits = limits
        # How far ahead a connection's timer is set: the shorter timeout.
        self.step = min(limits.idle_timeout, limits.header_timeout)
        self.stats = GuardStats()
        self.open = 0
        self._per_peer: dict[str, int] = {}
        self._by_transport: dict[asyncio.BaseTransport, _Guarded] = {}
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.fd_limit = None if soft == resource.RLIM_INFINITY else soft
        self._fd_count: tuple[float, int | None] = (float("-inf"), None)
        self._warned: dict[str, float] = {}
        guard = self

        class _ResponseDone(AbstractAccessLogger):
            """aiohttp's access-log hook, used only to learn that a response was sent."""

            def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
                transport = request.transport
                if transport is not None:
                    wrapper = guard._by_transport.get(transport)
                    if wrapper is not None:
                        wrapper.response_done()

        self._access_log_class = _ResponseDone

    def server_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``web.AppRunner``/``web.Server`` that connect aiohttp to this guard."""
        return {
            "access_log_class": self._access_log_class,
            "access_log": logging.getLogger("agent_token_broker.access"),
            # aiohttp's own idle close, as a backstop a second after ours
            "keepalive_timeout": self.limits.idle_timeout + 1.0,
        }

    def protocol_factory(self, server: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        """Wrap ``server`` (aiohttp's protocol factory, e.g. ``runner.server``)."""
        return lambda: _Guarded(self, server)

    # -- admission ----------------------------------------------------------------------------
    def _fds_left(self) -> int | None:
        if self.fd_limit is None:
            return None
        now = time.monotonic()
        at, count = self._fd_count
        if now - at > FD_COUNT_CACHE_SECONDS:
            count = _open_fds()
            self._fd_count = (now, count)
        return None if count is None else self.fd_limit - count

    def refusal(self, peer: str | None) -> tuple[str, bytes] | None:
        """Why a new connection from ``peer`` is refused (reason, response), or None to accept it."""
        limits = self.limits
        if limits.max_connections is not None and self.open >= limits.max_connections:
            return "connections", _canned(
                503, "Service Unavailable", f"the {self.name} listener has too many open connections",
                "too-many-connections", "Retry-After: 5\r\n",
            )  # fmt: skip
        per_peer = limits.max_connections_per_peer
        if per_peer is not None and peer is not None and self._per_peer.get(peer, 0) >= per_peer:
            return "peer", _canned(
                503, "Service Unavailable", f"too many open connections from this address (at most {per_peer})",
                "too-many-connections", "Retry-After: 5\r\n",
            )  # fmt: skip
        if limits.reserve_fds and self.fd_limit is not None:
            left = self._fds_left()
            if left is not None and left <= fd_reserve(self.fd_limit):
                self._fd_count = (float("-inf"), None)  # recount on the next attempt
                return "descriptors", _canned(
                    503, "Service Unavailable", "the broker is short of file descriptors; the API comes first",
                    "too-many-connections", "Retry-After: 5\r\n",
                )  # fmt: skip
        return None

    def refused(self, reason: str) -> None:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._warned.get(reason, float("-inf")) >= WARN_EVERY_SECONDS:
            self._warned[reason] = now
            what = {"connections": "connection cap", "peer": "per-peer connection cap",
                    "descriptors": "file-descriptor reserve"}[reason]  # fmt: skip
            log.warning(
                "%s listener: refusing new connections (%s reached; %d refused so far)",
                self.name, what, self.stats.refused[reason],
            )  # fmt: skip

    def opened(self, transport: asyncio.BaseTransport, wrapper: _Guarded, peer: str | None) -> None:
        self.open += 1
        if peer is not None:
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._by_transport[transport] = wrapper
        self._fd_count = (self._fd_count[0], None if self._fd_count[1] is None else self._fd_count[1] + 1)

    def closed(self, transport: asyncio.BaseTransport, peer: str | None) -> None:
        self.open -= 1
        if peer is not None:
            left = self._per_peer.get(peer, 1) - 1
            if left > 0:
                self._per_peer[peer] = left
            else:
                self._per_peer.pop(peer, None)
        self._by_transport.pop(transport, None)


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, timeouts and admission outside."""

    __slots__ = ("_deadline", "_guard", "_handle", "_inner", "_loop", "_peer", "_server", "_state", "_tail",
                 "_transport")  # fmt: skip

    def __init__(self, guard: ConnectionGuard, server: Callable[[], asyncio.BaseProtocol]) -> None:
        self._guard = guard
        self._server = server
        self._inner: Any = None
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._state = _IDLE
        self._deadline = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._tail = b""
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        guard = self._guard
        peer = _peer(transport)
        refusal = guard.refusal(peer)
        if refusal is not None:
            reason, response = refusal
            guard.refused(reason)
            transport.write(response)
            transport.close()
            return
        self._transport, self._peer = transport, peer
        guard.opened(transport, self, peer)
        self._inner = self._server()
        self._inner.connection_made(transport)
        self._arm(self._loop.time() + guard.limits.idle_timeout)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            return
        if self._state != _REQUEST:
            if self._state == _IDLE:
                self._state = _HEAD
                self._tail = b""
                self._arm(self._loop.time() + self._guard.limits.header_timeout)
            seen = self._tail + data if self._tail else data
            if _HEAD_END in seen:
                self._state = _REQUEST
                self._tail = b""
            else:
                self._tail = seen[-3:]
        inner.data_received(data)

    def response_done(self) -> None:
        self._state = _IDLE
        self._arm(self._loop.time() + self._guard.limits.idle_timeout)

    def _arm(self, deadline: float) -> None:
        # One timer per connection, never moved per request: it is scheduled at most ``step`` (the
        # shorter timeout) ahead, so every later deadline is at or after it; when it fires early it
        # schedules itself again (at most once per ``step`` on a busy connection).
        self._deadline = deadline
        if self._handle is None:
            self._handle = self._loop.call_at(min(deadline, self._loop.time() + self._guard.step), self._fire)

    def _fire(self) -> None:
        self._handle = None
        transport = self._transport
        if transport is None or self._state == _REQUEST or transport.is_closing():
            return
        now = self._loop.time()
        if now < self._deadline:
            self._handle = self._loop.call_at(min(self._deadline, now + self._guard.step), self._fire)
            return
        if self._state == _HEAD:
            self._guard.stats.header_timeouts += 1
            transport.write(_REQUEST_TIMEOUT)
        else:
            self._guard.stats.idle_timeouts += 1
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        transport, self._transport = self._transport, None
        if transport is not None:
            self._guard.closed(transport, self._peer)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


async def serve(bound: BoundListener, guard: ConnectionGuard, server: Callable[[], asyncio.BaseProtocol]) -> list[asyncio.AbstractServer]:
    """Start accepting on ``bound``'s sockets with ``server`` behind ``guard``."""
    loop = asyncio.get_running_loop()
    factory = guard.protocol_factory(server)
    return [await loop.create_server(factory, sock=sock) for sock in bound.sockets]
