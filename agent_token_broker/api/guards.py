"""Inbound request guards of the API listener (run before any route handler).

In order: exact normalised path; caller address (loopback, the Unix socket, or
``Broker__AllowedCallers``); size limits; proxy and browser signals; the ``Host``
header (anti DNS-rebinding); the optional required header; per-caller and global
concurrency; a request timeout. ``/healthz`` only gets the path, size and
concurrency checks, so probes keep working. Each refusal is a problem+json 4xx
naming the rule; nothing from the request is echoed back.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import re
import socket
import struct
import weakref
from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion10, hdrs, web

from agent_token_broker.api.deadlines import Deadlines
from agent_token_broker.api.limits import InFlight
from agent_token_broker.api.problems import ProblemError, retry_after_header
from agent_token_broker.api.state import RUNTIME
from agent_token_broker.settings import Settings
from agent_token_broker.settings.security import IPNetwork

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EXEMPT_PATHS = frozenset({"/healthz"})
# Routes with a secret header of their own (the managed-identity endpoint's X-IDENTITY-HEADER,
# which Azure SDKs send and which no page or SSRF can forge): no Broker__RequireHeader there.
OWN_SECRET_PATHS = frozenset({"/msi/token"})
# RFC 3986 pchar minus '%' (no percent-encoding at all: every route and API name is plain ASCII).
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/-]*")
API_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_-])?")
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")
_BROWSER_OK = {"sec-fetch-site": {"none"}, "sec-fetch-mode": {"navigate"}, "sec-fetch-dest": {"document", "empty"}}
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
_PEERCRED = struct.Struct("3i")


class GuardState:
    """Per-app mutable state of the guards."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.in_flight = InFlight(settings.security.limits)
        self.deadlines = Deadlines(settings.security.limits.request_timeout_seconds)

    def settings_changed(self, _old: Settings, new: Settings) -> None:
        """A reload: new allow-lists and limits for the next request; counts and buckets kept."""
        self.settings = new
        limits = new.security.limits
        self.in_flight.configure(limits)
        self.deadlines.configure(limits.request_timeout_seconds)


_STATES: weakref.WeakKeyDictionary[web.Application, GuardState] = weakref.WeakKeyDictionary()


def guard_state(app: web.Application) -> GuardState:
    state = _STATES.get(app)
    if state is None:
        runtime = app[RUNTIME]
        state = _STATES[app] = GuardState(runtime.settings)
        runtime.on_settings_change(state.settings_changed)
    return state


async def start_guards(app: web.Application) -> None:
    """``on_startup``: start the request-deadline watchdog."""
    guard_state(app).deadlines.start()


async def stop_guards(app: web.Application) -> None:
    """``on_cleanup``: stop the request-deadline watchdog."""
    await guard_state(app).deadlines.stop()


# -- caller identity -----------------------------------------------------------


def _unix_peer(request: web.Request) -> str | None:
    """``"unix"`` (or ``"uid:N"`` when SO_PEERCRED is available) for Unix-socket peers."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        _pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except (AttributeError, OSError):
        return "unix"
    return f"uid:{uid}"


@functools.lru_cache(maxsize=1024)
def _parse_peer_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse a peer IP once per distinct address (keep-alive peers repeat; ipaddress is slow)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_address(request: web.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The TCP peer's address (IPv4-mapped IPv6 unwrapped), or None."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not isinstance(peer, tuple) or not peer:
        return None
    return _parse_peer_ip(str(peer[0]))


@functools.lru_cache(maxsize=1024)
def _address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(address)


@functools.lru_cache(maxsize=1024)
def _address_allowed(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[IPNetwork, ...]
) -> bool:
    return address.is_loopback or any(address in net for net in networks)


_UNKNOWN = "?"  # "the Unix-peer lookup was not done yet" (distinct from None = not a Unix peer)


def caller_key(request: web.Request, unix: str | None = _UNKNOWN) -> str:
    """A stable name for the caller: ``uid:N``/``unix`` on the Unix socket, else the peer IP."""
    if unix == _UNKNOWN:
        unix = _unix_peer(request)
    if unix is not None:
        return unix
    address = peer_address(request)
    return _address_text(address) if address is not None else "unknown"


def caller_allowed(
    request: web.Request, networks: tuple[IPNetwork, ...], unix: str | None = _UNKNOWN
) -> bool:
    """Loopback and Unix-socket peers always; other peers only inside ``networks``."""
    if unix == _UNKNOWN:
        unix = _unix_peer(request)
    if unix is not None:
        return True
    address = peer_address(request)
    if address is None:
        return False
    return _address_allowed(address, networks)


# -- individual checks (each raises ProblemError) --------------------------------


_BAD_PATH = ProblemError(
    400,
    "the request path must be plain and normalised (no '%' escapes, '\\', '//', '.' or '..')",
    slug="bad-path",
)
_MISSING_HOST = "the request has no Host header (send HTTP/1.1, or Host with HTTP/1.0)"
_BAD_API = ProblemError(
    400, "API names are 1-64 characters: letters, digits, '.', '_' and '-'", slug="bad-api-name"
)


@functools.lru_cache(maxsize=1024)
def _path_problem(path: str, api: str | None) -> ProblemError | None:
    """The verdict on a path (memoised: hot callers repeat the same path)."""
    bad = _PATH.fullmatch(path) is None or (
        path != "/" and any(seg in ("", ".", "..") for seg in path.split("/")[1:])
    )
    if bad:
        return _BAD_PATH
    if api is not None and API_NAME.fullmatch(api) is None:
        return _BAD_API
    return None


def check_path(request: web.Request) -> None:
    """The request target must be an exact, already-normal origin-form path."""
    problem = _path_problem(request.raw_path.split("?", 1)[0], request.match_info.get("api"))
    if problem is not None:
        raise ProblemError(problem.status, problem.detail, slug=problem.slug)


# Lower-case header names that make check_signals look closer (one pass over the raw headers).
_SIGNAL_NAMES = frozenset(
    name.lower().encode() for name in (*PROXY_HEADERS, "Origin", *_BROWSER_OK, "Transfer-Encoding")
)


def check_sizes(request: web.Request, settings: Settings) -> bool:
    """Size limits; returns whether a proxy/browser/transfer-encoding header is present."""
    limits = settings.security.limits
    if len(request.query_string) > limits.max_query_bytes:
        raise ProblemError(414, f"the query string is longer than {limits.max_query_bytes} bytes", slug="too-long")
    raw = request.raw_headers
    total = 0
    flagged = False
    for name, value in raw:
        total += len(name) + len(value) + 4
        if not flagged and name.lower() in _SIGNAL_NAMES:
            flagged = True
    if total > limits.max_total_header_bytes or len(raw) > limits.max_headers:
        raise ProblemError(431, "the request headers are too large", slug="headers-too-large")
    length = request.content_length
    chunked = flagged and "chunked" in request.headers.get(hdrs.TRANSFER_ENCODING, "").lower()
    if request.method in ("GET", "HEAD", "DELETE", "OPTIONS") and ((length or 0) > 0 or chunked):
        raise ProblemError(413, f"{request.method} requests to the broker carry no body", slug="body-too-large")
    if length is not None and length > limits.max_body_bytes:
        raise ProblemError(413, f"the body is larger than {limits.max_body_bytes} bytes", slug="body-too-large")
    return flagged


def check_signals(request: web.Request) -> None:
    """Refuse requests that came through a proxy or from a web page (as IMDS does)."""
    headers = request.headers
    for name in PROXY_HEADERS:
        if name in headers:
            raise ProblemError(
                403, f"requests carrying {name} are refused: call the broker directly", slug="proxied-request"
            )
    if hdrs.ORIGIN in headers:
        raise ProblemError(403, "requests from web pages (Origin) are refused", slug="browser-request")
    for name, ok in _BROWSER_OK.items():
        value = headers.get(name)
        if value is not None and value.strip().lower() not in ok:
            raise ProblemError(
                403, f"cross-site browser requests ({name.title()}) are refused", slug="browser-request"
            )


def _host_name(value: str) -> str | None:
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return value[1:end]
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name


@functools.lru_cache(maxsize=1024)
def _host_allowed(raw: str, local: str | None, allowed: tuple[str, ...]) -> bool:
    name = _host_name(raw)
    if name is None:
        return False
    if name in LOOPBACK_NAMES or name.rstrip(".") in allowed:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or str(address) == local or str(address) in allowed


def check_host(request: web.Request, settings: Settings, unix: str | None = None) -> None:
    """``Host`` must name loopback, the address the connection arrived on, or an allowed host."""
    if unix is not None:
        return
    raw = request.headers.get(hdrs.HOST)
    if raw is None:  # HTTP/1.0 may omit it; then nothing says which name the caller used
        raise ProblemError(400, _MISSING_HOST, slug="missing-host")
    allowed = settings.security.allowed_hosts
    if "*" in allowed:
        return
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    local = str(sockname[0]).split("%", 1)[0] if isinstance(sockname, tuple) and sockname else None
    if not _host_allowed(raw, local, allowed):
        raise ProblemError(
            403,
            "the Host header must name this machine (localhost, a loopback address or Broker__AllowedHosts)",
            slug="host-not-allowed",
        )


def check_required_header(request: web.Request, settings: Settings) -> None:
    required = settings.security.require_header
    if not required.enabled:
        return
    value = request.headers.get(required.name)
    if value is None or not hmac.compare_digest(value.strip().encode(), required.value.encode()):
        raise ProblemError(
            400,
            f"this broker requires the request header '{required.name}: {required.value}' "
            "(Broker__RequireHeader__*; on by default in strict mode)",
            slug="missing-required-header",
            title=f"required request header missing: {required.name}",
            config_key="Broker__RequireHeader__Enabled",
        )


# -- the middleware ----------------------------------------------------------------


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run every inbound check, then the handler within the concurrency cap and time limit."""
    state = guard_state(request.app)
    settings = state.settings
    if request.version < HttpVersion10:  # HTTP/0.9-style request line: no headers at all
        raise ProblemError(400, "HTTP/1.0 or HTTP/1.1 is required", slug="bad-http")
    check_path(request)
    exempt = request.path in EXEMPT_PATHS
    unix = _unix_peer(request)
    if not exempt and not caller_allowed(request, settings.security.allowed_callers, unix):
        raise ProblemError(403, "callers must connect over loopback", slug="caller-not-local")
    flagged = check_sizes(request, settings)
    if not exempt:
        if flagged:
            check_signals(request)
        check_host(request, settings, unix)
        if request.path not in OWN_SECRET_PATHS:
            check_required_header(request, settings)
    caller = caller_key(request, unix)
    state.in_flight.enter(caller)
    task = asyncio.current_task()
    deadlines = state.deadlines
    if task is not None:
        deadlines.enter(task, task.get_loop().time())
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if task is not None and deadlines.leave(task):
            task.uncancel()
            raise ProblemError(
                503, "the request took too long", slug="request-timeout", headers=retry_after_header(1)
            ) from None
        raise
    finally:
        if task is not None:
            deadlines.leave(task)
        state.in_flight.leave(caller)
