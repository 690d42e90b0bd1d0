"""Inbound request guards of the API listener: named, pure checks (no state of their own).

:class:`agent_token_broker.api.front.ApiFront` calls them, in the order documented in
``docs/security.md`` ("Guard order"): HTTP version; exact normalised path; caller address
(decided once per connection, see :mod:`agent_token_broker.api.protocol`); size limits;
proxy and browser signals; the ``Host`` header (anti DNS-rebinding); the optional required
header; then concurrency and the request deadline. ``/healthz`` only gets the path, size and
concurrency checks, so probes keep working. Each refusal is a problem+json 4xx naming the
rule; nothing from the request is echoed back.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
import socket
import struct
from collections.abc import Mapping

from aiohttp import HttpVersion10, hdrs, web

from agent_token_broker.api.problems import ProblemError
from agent_token_broker.settings.security import IPNetwork, LimitsConfig, RequireHeaderConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
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


# -- the caller (per connection) -------------------------------------------------------------


def unix_peer(sock: socket.socket | None) -> str | None:
    """``"uid:N"`` (or ``"unix"`` without SO_PEERCRED) for a Unix-socket peer, else None."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (AttributeError, OSError):
        return "unix"
    return f"uid:{uid}"


@functools.lru_cache(maxsize=1024)
def parse_peer_ip(host: str) -> IPAddress | None:
    """A TCP peer's address (IPv4-mapped IPv6 unwrapped, zone dropped), or None when unparsable."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def caller_allowed(address: IPAddress | None, networks: tuple[IPNetwork, ...]) -> bool:
    """A TCP peer may call: loopback always; other addresses only inside ``networks``."""
    if address is None:
        return False
    return address.is_loopback or any(address in net for net in networks)


def caller_not_local() -> ProblemError:
    """The refusal of a caller :func:`caller_allowed` refused (a new one each time: raised exceptions
    carry their traceback)."""
    return ProblemError(403, "callers must connect over loopback", slug="caller-not-local")


# -- per request -----------------------------------------------------------------------------------


def check_version(request: web.BaseRequest) -> None:
    """HTTP/1.0 or 1.1: an HTTP/0.9-style request line has no headers at all."""
    if request.version < HttpVersion10:
        raise ProblemError(400, "HTTP/1.0 or HTTP/1.1 is required", slug="bad-http")


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
def path_problem(path: str, api: str | None) -> ProblemError | None:
    """The verdict on a request path and its API name (memoised: hot callers repeat the same path)."""
    bad = _PATH.fullmatch(path) is None or (
        path != "/" and any(seg in ("", ".", "..") for seg in path.split("/")[1:])
    )
    if bad:
        return _BAD_PATH
    if api is not None and API_NAME.fullmatch(api) is None:
        return _BAD_API
    return None


def check_path(path: str, api: str | None = None) -> None:
    """The request target must be an exact, already-normal origin-form path."""
    problem = path_problem(path, api)
    if problem is not None:
        raise ProblemError(problem.status, problem.detail, slug=problem.slug)


_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
# Lower-case header names that make check_signals look closer (one pass over the raw headers).
_SIGNAL_NAMES = frozenset(
    name.lower().encode() for name in (*PROXY_HEADERS, "Origin", *_BROWSER_OK, "Transfer-Encoding")
)


def check_sizes(request: web.BaseRequest, limits: LimitsConfig, raw_query: str | None = None) -> bool:
    """Size limits (414 query, 431 headers, 413 body), in one pass over the raw headers; returns
    whether a proxy, browser or transfer-encoding header is present (then :func:`check_signals`).

    The query limit applies to the decoded query string; ``raw_query`` (the still-encoded one, when
    the caller has it) spares decoding a short one: decoding never makes a string longer."""
    if (raw_query is None or len(raw_query) > limits.max_query_bytes) and len(
        request.query_string
    ) > limits.max_query_bytes:
        raise ProblemError(414, f"the query string is longer than {limits.max_query_bytes} bytes", slug="too-long")
    raw = request.raw_headers
    total = 4 * len(raw)  # ": " and CRLF
    flagged = announced = False
    for name, value in raw:
        total += len(name) + len(value)
        if not flagged:
            lower = name.lower()
            if lower in _SIGNAL_NAMES:
                flagged = True
            elif lower == b"content-length":
                announced = True
    if total > limits.max_total_header_bytes or len(raw) > limits.max_headers:
        raise ProblemError(431, "the request headers are too large", slug="headers-too-large")
    if not announced and not flagged:
        return False  # no body announced (no Content-Length, no Transfer-Encoding)
    length = request.content_length
    chunked = flagged and "chunked" in request.headers.get(hdrs.TRANSFER_ENCODING, "").lower()
    if request.method in _NO_BODY_METHODS and ((length or 0) > 0 or chunked):
        raise ProblemError(413, f"{request.method} requests to the broker carry no body", slug="body-too-large")
    if length is not None and length > limits.max_body_bytes:
        raise ProblemError(413, f"the body is larger than {limits.max_body_bytes} bytes", slug="body-too-large")
    return flagged


def check_signals(headers: Mapping[str, str]) -> None:
    """Refuse requests that came through a proxy or from a web page (as IMDS does)."""
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
def host_allowed(raw: str, local: str | None, allowed: tuple[str, ...]) -> bool:
    """A ``Host`` value names loopback, ``local`` (the address the connection arrived on) or an allowed host."""
    if "*" in allowed:
        return True
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




def check_host(raw: str | None, local: str | None, allowed: tuple[str, ...]) -> None:
    """``Host`` (``raw``; None when absent) must pass :func:`host_allowed`; HTTP/1.0 may omit it,
    but then nothing says which name the caller used, so that is refused too."""
    if raw is None:
        raise ProblemError(400, _MISSING_HOST, slug="missing-host")
    if not host_allowed(raw, local, allowed):
        raise ProblemError(
            403,
            "the Host header must name this machine (localhost, a loopback address or Broker__AllowedHosts)",
            slug="host-not-allowed",
        )


def check_required_header(headers: Mapping[str, str], required: RequireHeaderConfig) -> None:
    """``Broker__RequireHeader__*``: when enabled, the header must carry exactly the value (constant time)."""
    if not required.enabled:
        return
    value = headers.get(required.name)
    if value is None or not hmac.compare_digest(value.strip().encode(), required.value.encode()):
        raise ProblemError(
            400,
            f"this broker requires the request header '{required.name}: {required.value}' "
            "(Broker__RequireHeader__*; on by default in strict mode)",
            slug="missing-required-header",
            title=f"required request header missing: {required.name}",
            config_key="Broker__RequireHeader__Enabled",
        )
