"""Operator cache eviction on the ops listener (like Vault Agent's ``/agent/v1/cache-clear``).

``POST /admin/cache/clear`` with ``Authorization: Bearer <Broker__Cache__AdminSecret>`` and a
JSON body ``{"type": "agent" | "blueprint" | "all", "value": "<client id GUID>"}`` (no ``value``
for ``all``; a value that is not a GUID is a 400) removes the matching cached tokens (and their
remembered failures) at once and answers ``{"type": ..., "value": ..., "evicted": N,
"remaining": M}``. The route exists only when the secret is configured; every error is
problem+json (a body over the ops app's size limit: 413 ``payload-too-large``).
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid

from aiohttp import web

from agent_token_broker.api.problems import NO_STORE, ProblemError
from agent_token_broker.api.state import RUNTIME
from agent_token_broker.entra.legs import agent_tag, blueprint_tag
from agent_token_broker.jsonlimits import loads_bounded
from agent_token_broker.runtime import Runtime

log = logging.getLogger("agent_token_broker.admin")

CLEAR_PATH = "/admin/cache/clear"
CLEAR_TYPES = ("agent", "blueprint", "all")


def _authorize(request: web.Request, secret: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode("utf-8"), secret.encode("utf-8")
    )
    if not ok:
        log.warning("cache clear refused: missing or wrong admin secret from %s", request.remote)
        raise ProblemError(
            401,
            "this route needs 'Authorization: Bearer <Broker__Cache__AdminSecret>'",
            slug="admin-unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="broker-admin"'},
        )


async def _read_body(request: web.Request) -> tuple[str, str | None]:
    if not request.can_read_body:
        raise ProblemError(400, 'a JSON body {"type": "agent|blueprint|all", "value": ...} is required')
    try:
        body = loads_bounded(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise ProblemError(400, "the body is not valid JSON", slug="bad-request") from None
    if not isinstance(body, dict):
        raise ProblemError(400, "the body must be a JSON object", slug="bad-request")
    kind = body.get("type")
    if kind not in CLEAR_TYPES:
        raise ProblemError(400, f"'type' must be one of {', '.join(CLEAR_TYPES)}", slug="bad-request")
    value = body.get("value")
    if kind == "all":
        if value is not None:
            raise ProblemError(400, "'value' is not allowed with type 'all'", slug="bad-request")
        return kind, None
    try:  # client ids are GUIDs: anything else cannot name a cached token
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError(value)
        guid = str(uuid.UUID(value))
    except ValueError:
        raise ProblemError(400, f"'value' must be the {kind}'s client id (a GUID)", slug="bad-request") from None
    return kind, guid


def evict(runtime: Runtime, kind: str, value: str | None) -> int:
    """Remove the cached tokens of an agent identity, of a blueprint, or all of them."""
    cache = runtime.cache
    shared = runtime.shared_cache
    if kind == "all":
        if shared is not None:
            shared.forget(None)  # nor refilled from Redis by this replica
        return cache.clear()
    assert value is not None
    tag = agent_tag(value) if kind == "agent" else blueprint_tag(value)
    if shared is not None:
        shared.forget((tag,))
    return cache.evict_tag(tag)


async def cache_clear(request: web.Request) -> web.Response:
    """``POST /admin/cache/clear``: evict by agent identity, by blueprint, or everything."""
    runtime = request.app[RUNTIME]
    secret = runtime.settings.cache.admin_secret
    if secret is None:  # pragma: no cover - the route is only added when configured
        raise ProblemError(404, "no such route")
    _authorize(request, secret.reveal())
    kind, value = await _read_body(request)
    evicted = evict(runtime, kind, value)
    log.info("cache clear: type=%s value=%s evicted=%d", kind, value or "-", evicted)
    body = {"type": kind, "value": value, "evicted": evicted, "remaining": len(runtime.cache)}
    return web.Response(
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json; charset=utf-8", **NO_STORE},
    )


def add_admin_routes(app: web.Application, runtime: Runtime) -> None:
    """Register the admin routes on the ops app, only when ``Broker__Cache__AdminSecret`` is set."""
    if runtime.settings.cache.admin_secret is not None:
        app.router.add_post(CLEAR_PATH, cache_clear)
