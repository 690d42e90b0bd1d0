"""API middlewares: problem+json for every error (no tracebacks), and the inbound guards."""

from __future__ import annotations

import ipaddress
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from broker.api.guards import guard_middleware
from broker.api.problems import ProblemError, problem_response, render

log = logging.getLogger("broker.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_local_peer(request: web.Request) -> bool:
    """True for loopback TCP peers (IPv4, IPv6, IPv4-mapped) and Unix-socket peers."""
    transport = request.transport
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None and getattr(sock, "family", None) == socket.AF_UNIX:
        return True
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as problem+json; unexpected ones as a generic 500 with a request id."""
    try:
        return await handler(request)
    except ProblemError as err:
        return render(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = {404: "no such route", 405: f"method {request.method} is not allowed here"}.get(
            exc.status, exc.reason
        )
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(exc.status, detail, headers=headers)
    except Exception as exc:
        request_id = str(uuid.uuid4())
        log.error(
            "unexpected error handling %s %s: %s (requestId=%s)",
            request.method,
            request.path,
            type(exc).__name__,
            request_id,
        )
        return problem_response(500, "An unexpected error occurred.", requestId=request_id)


# All inbound checks (caller address, path, proxy/browser signals, Host, required header,
# limits) live in broker.api.guards; this name is kept for the app factory.
local_callers_middleware = guard_middleware
