"""aiohttp application factories: the API app (loopback) and the ops app (metrics, health)."""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from agent_token_broker.api.admin import add_admin_routes
from agent_token_broker.api.downstream import add_downstream_routes
from agent_token_broker.api.gate import TokenGate
from agent_token_broker.api.guards import guard_middleware, start_guards, stop_guards
from agent_token_broker.api.middleware import errors_middleware
from agent_token_broker.api.msi import add_msi_routes
from agent_token_broker.api.observe import bind_routes, observe_middleware
from agent_token_broker.api.openapi import openapi_document
from agent_token_broker.api.refusals import RefusalLog
from agent_token_broker.api.routes import add_routes, healthz
from agent_token_broker.api.state import GATE, REFUSALS, RUNTIME
from agent_token_broker.runtime import Runtime

API_MAX_BODY = 64 * 1024


def create_api_app(runtime: Runtime) -> web.Application:
    """The token API, with Microsoft's sidecar's routes."""
    app = web.Application(
        middlewares=[observe_middleware(runtime.metrics, runtime.tracer), errors_middleware, guard_middleware],
        client_max_size=API_MAX_BODY,
    )
    app[RUNTIME] = runtime
    app[GATE] = TokenGate(runtime)
    app[REFUSALS] = RefusalLog()
    app.on_startup.append(start_guards)
    app.on_cleanup.append(stop_guards)
    add_routes(app)
    add_downstream_routes(app)
    add_msi_routes(app, runtime.settings.managed_identity_endpoint)
    bind_routes(app, runtime.metrics)
    return app


async def _readyz(request: web.Request) -> web.Response:
    """200 while tokens can be served (``detail`` says ``degraded`` when only from cache), else 503."""
    runtime = request.app[RUNTIME]
    state = runtime.readiness_state()
    body: dict[str, object] = {
        "ready": state.ready,
        "detail": state.detail,
        "cachedTokens": len(runtime.cache),
    }
    if state.servable_tokens is not None:
        body["servableTokens"] = state.servable_tokens
    return web.Response(
        status=200 if state.ready else 503,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


_OPENAPI = json.dumps(openapi_document()).encode()


async def _openapi(_request: web.Request) -> web.Response:
    return web.Response(body=_OPENAPI, content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_ops_app(runtime: Runtime) -> web.Application:
    """Operations listener: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``,
    ``/openapi.json`` (the API listener's OpenAPI document)."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=API_MAX_BODY)
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", healthz, allow_head=False)  # the API listener's own
    app.router.add_get("/readyz", _readyz, allow_head=False)
    app.router.add_get("/metrics", _metrics, allow_head=False)
    app.router.add_get("/openapi.json", _openapi, allow_head=False)
    add_admin_routes(app, runtime)
    return app
