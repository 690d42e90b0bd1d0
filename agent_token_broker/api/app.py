"""The ops listener's aiohttp application (health, readiness, metrics, OpenAPI, admin) and the API
listener's parser limits (its handler is :class:`agent_token_broker.api.front.ApiFront`)."""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from agent_token_broker.api.admin import add_admin_routes
from agent_token_broker.api.middleware import errors_middleware
from agent_token_broker.api.openapi import openapi_document
from agent_token_broker.api.routes import healthz
from agent_token_broker.api.state import RUNTIME
from agent_token_broker.runtime import Runtime
from agent_token_broker.settings import Settings

API_MAX_BODY = 64 * 1024


def parser_limits(settings: Settings) -> dict[str, int]:
    """aiohttp's HTTP parser limits for the API listener (``Broker__Limits__*``; 431 beyond), as the
    keyword arguments ``web.Server`` takes."""
    limits = settings.security.limits
    return {
        "max_line_size": limits.max_request_line_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
    }


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
