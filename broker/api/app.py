"""aiohttp application factories: the API app (loopback) and the ops app (metrics, health)."""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.api.admin import add_admin_routes
from broker.api.middleware import errors_middleware, local_callers_middleware
from broker.api.routes import add_routes
from broker.api.state import RUNTIME
from broker.runtime import Runtime

API_MAX_BODY = 64 * 1024


def create_api_app(runtime: Runtime) -> web.Application:
    """The token API, with Microsoft's sidecar's routes."""
    app = web.Application(
        middlewares=[errors_middleware, local_callers_middleware], client_max_size=API_MAX_BODY
    )
    app[RUNTIME] = runtime
    add_routes(app)
    return app


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="Healthy")


async def _readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    ready = runtime.ready_event.is_set()
    body = {"ready": ready, "detail": runtime.readiness_detail, "cachedTokens": len(runtime.cache)}
    return web.Response(
        status=200 if ready else 503, body=json.dumps(body).encode(), content_type="application/json"
    )


async def _metrics(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_ops_app(runtime: Runtime) -> web.Application:
    """Operations listener: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=API_MAX_BODY)
    app[RUNTIME] = runtime
    app.router.add_get("/healthz", _healthz, allow_head=False)
    app.router.add_get("/readyz", _readyz, allow_head=False)
    app.router.add_get("/metrics", _metrics, allow_head=False)
    add_admin_routes(app, runtime)
    return app
