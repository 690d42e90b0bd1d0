"""The API listener's one request handler, on aiohttp's low-level server (``web.Server``).

No ``Application``, router or middleware chain: :class:`ApiFront` finds the endpoint in a
table of exact paths (``/Validate``) and of path prefixes before one ``/{api}`` segment
(``/AuthorizationHeader``), then runs, in this order (docs/security.md, "Guard order"):

1. HTTP/1.0 or 1.1 (:func:`~agent_token_broker.api.guards.check_version`);
2. the exact, normalised path and API name (:func:`~agent_token_broker.api.guards.check_path`);
3. the caller: loopback, the Unix socket or ``Broker__AllowedCallers``, decided once per
   connection (:class:`~agent_token_broker.api.protocol.Connection`);
4. sizes: query, headers (one pass over them), body (:func:`~agent_token_broker.api.guards.check_sizes`);
5. proxy and browser headers, only when that pass saw one (:func:`~agent_token_broker.api.guards.check_signals`);
6. ``Host`` (anti DNS-rebinding; not on the Unix socket; the connection remembers the last
   value it allowed) (:func:`~agent_token_broker.api.guards.check_host`);
7. ``Broker__RequireHeader__*`` (not on ``/msi/token``) (:func:`~agent_token_broker.api.guards.check_required_header`);
8. concurrency, per caller and in total (:class:`~agent_token_broker.api.limits.InFlight`);
9. no such route (404) or method (405);
10. the endpoint. A cache hit of ``/AuthorizationHeaderUnauthenticated/{api}`` is answered right
    here, in the same function: the gate's decision this connection remembered for its last
    target (a connection repeating its request, under the same policy epoch), else the one
    remembered for this raw query string
    (:meth:`~agent_token_broker.api.gate.TokenGate.target`: no parse, so a broker cycling through
    100,000 identities answers as one holding a single one), else for the parsed query, then
    :meth:`~agent_token_broker.api.gate.TokenGate.hit_decision` (the caller's own policy, the
    cache's fresh token, the hit counted for the audit trail), then the token's pre-rendered answer. It awaits nothing, so nothing else runs while it is "in flight" and no
    deadline can expire: step 8 only checks, and no deadline is registered. Anything else (a
    miss, another route) enters the in-flight count and the request deadline
    (:class:`~agent_token_broker.api.deadlines.Deadlines`, 503 ``request-timeout``) and awaits the
    endpoint's handler, which gets its token from :meth:`~agent_token_broker.api.gate.TokenGate.token`.

``/healthz`` skips steps 3, 5, 6 and 7 (probes keep working). Every refusal is problem+json;
gated refusals are logged by the refusal log; every request is counted by route template and
status, timed, and gets a request id (``X-Request-Id``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import HttpVersion11, hdrs, web

from agent_token_broker.api import downstream, msi, routes
from agent_token_broker.api.caller_context import caller_context
from agent_token_broker.api.deadlines import Deadlines
from agent_token_broker.api.gate import Decision, TokenGate
from agent_token_broker.api.guards import (
    EXEMPT_PATHS,
    OWN_SECRET_PATHS,
    caller_not_local,
    check_host,
    check_path,
    check_required_header,
    check_signals,
    check_sizes,
    check_version,
)
from agent_token_broker.api.limits import InFlight
from agent_token_broker.api.middleware import http_error, unexpected_error
from agent_token_broker.api.observe import CLIENT_CLOSED, REQUEST_ID_HEADER, access_line, request_id_for
from agent_token_broker.api.params import Family, parse_query_string
from agent_token_broker.api.problems import ProblemError, render, retry_after_header
from agent_token_broker.api.protocol import Connection
from agent_token_broker.api.refusals import RefusalLog
from agent_token_broker.api.routes import JSON_HEADERS
from agent_token_broker.api.state import ApiServices, Endpoint
from agent_token_broker.logs import REQUEST_ID
from agent_token_broker.metrics import UNMATCHED, RouteChildren
from agent_token_broker.runtime import Runtime
from agent_token_broker.settings import Settings

access_log = logging.getLogger("agent_token_broker.access")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Bound:
    """An endpoint and its metric series (bound once)."""

    __slots__ = ("children", "endpoint")

    def __init__(self, endpoint: Endpoint, children: RouteChildren) -> None:
        self.endpoint = endpoint
        self.children = children


class _Seen:
    """What a connection's last request target gave (see :meth:`ApiFront.handle`)."""

    __slots__ = ("api", "bound", "decision", "epoch", "method", "path", "raw_query", "target")

    def __init__(self, target: str, method: str, path: str, raw_query: str, bound: _Bound, api: str | None) -> None:
        self.target, self.method, self.path, self.raw_query = target, method, path, raw_query
        self.bound, self.api = bound, api
        # The gate's decision for this target, valid while the gate's ``epoch`` is the same object
        # (a reload replaces it): a connection repeating its request looks nothing up.
        self.decision: Decision | None = None
        self.epoch: object = None


class ApiFront:
    """The API listener's handler (see the module docstring); one per broker."""

    def __init__(self, runtime: Runtime, extra: Iterable[Endpoint] = ()) -> None:
        self.runtime = runtime
        self.services = ApiServices(runtime, TokenGate(runtime), RefusalLog())
        limits = runtime.settings.security.limits
        self.in_flight = InFlight(limits)
        self.deadlines = Deadlines(limits.request_timeout_seconds)
        self._metrics = runtime.metrics
        self._unmatched = runtime.metrics.route(UNMATCHED)
        self._exact: dict[str, dict[str, _Bound]] = {}
        self._prefixed: dict[str, dict[str, _Bound]] = {}
        self._endpoints: list[Endpoint] = []
        for endpoint in (*routes.endpoints(self.services), *downstream.endpoints(self.services),
                         *msi.endpoints(self.services), *extra):  # fmt: skip
            self.add(endpoint)
        runtime.on_settings_change(self._settings_changed)
        self._tracer = runtime.tracer
        # aiohttp's handler: each request a server span when tracing is on (chosen once: the tracer
        # is the broker's for its whole life), the plain handler otherwise.
        self.handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]] = (
            self.handle if runtime.tracer is None else self._traced
        )

    def _settings_changed(self, _old: Settings, new: Settings) -> None:
        """A reload: the guards read ``runtime.settings`` on every request (and a connection decides
        its caller and Host again for new settings); the caps and the deadline take the new limits
        from the next request on, requests in flight stay counted."""
        limits = new.security.limits
        self.in_flight.configure(limits)
        self.deadlines.configure(limits.request_timeout_seconds)

    @property
    def gate(self) -> TokenGate:
        return self.services.gate

    def add(self, endpoint: Endpoint) -> None:
        """Serve ``endpoint`` (its metric series start at 0 now)."""
        prefix = endpoint.prefix
        table = self._exact if prefix is None else self._prefixed
        methods = table.setdefault(endpoint.template if prefix is None else prefix, {})
        if endpoint.method in methods:
            raise ValueError(f"{endpoint.method} {endpoint.template} is already served")
        methods[endpoint.method] = _Bound(endpoint, self._metrics.route(endpoint.template))
        self._endpoints.append(endpoint)

    def routes(self) -> list[tuple[str, str]]:
        """``(method, template)`` of every endpoint served."""
        return [(e.method, e.template) for e in self._endpoints]

    async def start(self) -> None:
        """Start the request-deadline watchdog."""
        self.deadlines.start()

    async def stop(self) -> None:
        await self.deadlines.stop()

    # -- the request ------------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request (aiohttp's low-level handler; aiohttp runs each request in a task of
        its own, so what it sets in :data:`~agent_token_broker.logs.REQUEST_ID` stays in it)."""
        started = time.perf_counter()
        headers = request.headers
        request_id = request_id_for(headers.get(REQUEST_ID_HEADER))
        bound: _Bound | None = None
        status = 500
        try:
            try:
                # -- guards (steps 1-9) ---------------------------------------------------------
                settings = self.runtime.settings
                security = settings.security
                conn = getattr(request.protocol, "connection", None) or self._connection(request)
                check_version(request)
                # Dispatch and the path check: pure functions of the method and target, so a
                # connection repeating its last request's reuses what they gave.
                target, method = request.raw_path, request.method
                seen: _Seen | None = conn.seen
                if seen is not None and seen.target == target and seen.method == method:
                    path, raw_query, bound, api = seen.path, seen.raw_query, seen.bound, seen.api
                else:
                    seen = None
                    path, _, raw_query = target.partition("?")
                    methods = self._exact.get(path)
                    api = None
                    if methods is None:
                        prefix, _, api = path.rpartition("/")
                        methods = self._prefixed.get(prefix)
                    bound = methods.get(method) if methods is not None else None
                    check_path(path, api if bound is not None else None)
                    if bound is not None:
                        conn.seen = seen = _Seen(target, method, path, raw_query, bound, api)
                exempt = path in EXEMPT_PATHS
                if not exempt and not conn.allowed(settings, security.allowed_callers):
                    raise caller_not_local()
                if check_sizes(request, security.limits, raw_query) and not exempt:
                    check_signals(headers)
                if not exempt:
                    if conn.unix is None:
                        host = headers.get(hdrs.HOST)
                        if host is None or conn.host_for is not settings or host != conn.host_seen:
                            check_host(host, conn.local, security.allowed_hosts)
                            conn.host_for, conn.host_seen = settings, host
                    required = security.require_header
                    if required.enabled and path not in OWN_SECRET_PATHS:
                        check_required_header(headers, required)
                caller = conn.caller
                self.in_flight.check(caller)
                if bound is None:
                    raise self._no_route(request, methods)
                endpoint = bound.endpoint
                # -- the cache hit (step 10, answered here) -----------------------------------
                if endpoint.hit is not None and api is not None:
                    context = conn.caller_context or caller_context(request)
                    gate = self.services.gate
                    decision: Decision | None
                    if seen is not None and seen.epoch is gate.epoch:
                        decision = seen.decision  # this connection's last target, same policy
                    else:
                        if "#" in raw_query:  # a fragment (clients send none): the query precedes it
                            raw_query = request.rel_url.raw_query_string
                        # The remembered decision: the target's (no parse), or the parsed query's
                        # (then remembered for the target too). Both are the gate's: a reload drops them.
                        decision = gate.target(endpoint.hit, api, raw_query)
                        if decision is None:
                            decision = gate.remembered(endpoint.hit, api, parse_query_string(raw_query, Family.HEADER))
                            if decision is not None:
                                gate.remember_target(endpoint.hit, api, raw_query, decision)
                        if seen is not None and decision is not None and decision.plain:
                            seen.decision, seen.epoch = decision, gate.epoch
                    token = gate.hit_decision(decision, endpoint.hit, api, context) if decision is not None else None
                    if token is not None:
                        response: web.StreamResponse = web.Response(body=token.answer, headers=JSON_HEADERS)
                        response.headers[REQUEST_ID_HEADER] = request_id
                        status = 200
                        return response
                # -- everything else (step 10, awaited) ----------------------------------------
                REQUEST_ID.set(request_id)  # every record logged for this request carries it
                response = await self._awaited(request, endpoint, api, caller)
            except ProblemError as err:
                if err.config_key is not None:
                    REQUEST_ID.set(request_id)
                    self.services.refusals.note(err, bound.endpoint.template if bound is not None else request.path)
                response = render(err)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = http_error(request, exc)
            except Exception as exc:
                REQUEST_ID.set(request_id)
                response = unexpected_error(request, exc)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            elapsed = time.perf_counter() - started
            children = self._unmatched if bound is None else bound.children
            children.observe(status, elapsed)
            if access_log.isEnabledFor(logging.DEBUG):
                access_line(request.method, children.route, status, elapsed, request_id)

    async def _traced(self, request: web.BaseRequest) -> web.StreamResponse:
        """:meth:`handle` inside a server span continuing the caller's ``traceparent``."""
        tracer = self._tracer
        assert tracer is not None
        route = self.route_of(request)
        with tracer.server(f"{request.method} {route}", request.headers) as span:
            span.set("http.request.method", request.method)
            span.set("http.route", route)
            response = await self.handle(request)
            span.set("http.response.status_code", response.status)
            if response.status >= 500:
                span.fail(f"HTTP {response.status}")
            return response

    def route_of(self, request: web.BaseRequest) -> str:
        """The route template ``request`` matches (``unmatched`` if none): the label of its metrics."""
        path = request.raw_path.partition("?")[0]
        methods = self._exact.get(path)
        if methods is None:
            methods = self._prefixed.get(path.rpartition("/")[0])
        bound = methods.get(request.method) if methods is not None else None
        return bound.endpoint.template if bound is not None else UNMATCHED

    @staticmethod
    def _connection(request: web.BaseRequest) -> Connection:
        """A connection served by another protocol than :class:`ApiProtocol` (e.g. aiohttp's test
        server) is decided per request."""
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the connection is gone")
        return Connection(transport)

    async def _awaited(
        self, request: web.BaseRequest, endpoint: Endpoint, api: str | None, caller: str
    ) -> web.StreamResponse:
        """The endpoint's handler, counted in flight and bounded by the request deadline."""
        self.in_flight.enter(caller)
        task = asyncio.current_task()
        deadlines = self.deadlines
        if task is not None:
            deadlines.enter(task, task.get_loop().time())
        try:
            if request.headers.get(hdrs.EXPECT) and request.version == HttpVersion11:
                await self._expect(request)
            return await endpoint.handler(request, api)
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
            self.in_flight.leave(caller)

    @staticmethod
    async def _expect(request: web.BaseRequest) -> None:
        """``Expect: 100-continue`` (after the guards: a refused caller is not asked for its body)."""
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            raise ProblemError(417, "only 'Expect: 100-continue' is supported", slug="expectation-failed")
        await request.writer.write(_CONTINUE)
        request.writer.output_size = 0  # the answer's own bytes are counted from here
        await request.writer.drain()

    @staticmethod
    def _no_route(request: web.BaseRequest, methods: dict[str, _Bound] | None) -> web.HTTPException:
        if methods:
            return web.HTTPMethodNotAllowed(request.method, sorted(methods))
        return web.HTTPNotFound()
