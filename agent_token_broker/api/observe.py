"""API middleware: request ids, request metrics and a debug access log line.

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

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent_token_broker.logs import REQUEST_ID
from agent_token_broker.metrics import UNMATCHED, BrokerMetrics

if TYPE_CHECKING:
    from agent_token_broker.tracing import Tracer

log = logging.getLogger("agent_token_broker.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "X-Request-Id"
CLIENT_CLOSED = 499
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_PREFIX = os.urandom(5).hex()
_counter = itertools.count(1)


def new_request_id() -> str:
    """A process-unique request id: a random per-process prefix and a counter (cheap)."""
    return f"{_PREFIX}-{next(_counter):x}"


def request_id_for(inbound: str | None) -> str:
    """The inbound id when it is sane, else a new one."""
    if inbound is not None and _SANE_ID.fullmatch(inbound):
        return inbound
    return new_request_id()


def bind_routes(app: web.Application, metrics: BrokerMetrics) -> None:
    """Create every route template's series (at 0) once the routes are registered."""
    for resource in app.router.resources():
        metrics.route(resource.canonical)


def observe_middleware(metrics: BrokerMetrics, tracer: Tracer | None = None) -> Middleware:
    """The outermost API middleware (it sees the final status of every answer); with ``tracer``, each
    request is also a server span continuing the caller's ``traceparent``."""
    route_children = metrics.route
    unmatched = metrics.route(UNMATCHED)
    perf = time.perf_counter

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = perf()
        request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        context_token = REQUEST_ID.set(request_id)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            elapsed = perf() - started
            resource = request.match_info.route.resource
            children = unmatched if resource is None else route_children(resource.canonical)
            children.observe(status, elapsed)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s -> %d",
                    request.method,
                    children.route,
                    status,
                    extra={
                        "route": children.route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
            REQUEST_ID.reset(context_token)

    if tracer is None:
        return observe

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        with tracer.server(f"{request.method} {route}", request.headers) as span:
            span.set("http.request.method", request.method)
            span.set("http.route", route)
            try:
                response = await observe(request, handler)
            except web.HTTPException as exc:
                span.set("http.response.status_code", exc.status)
                raise
            span.set("http.response.status_code", response.status)
            if response.status >= 500:
                span.fail(f"HTTP {response.status}")
            return response

    return traced
