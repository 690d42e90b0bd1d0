"""The Microsoft-compatible header routes and ``/Validate``: HTTP in, the gate's token out.

The token itself always comes from :meth:`agent_token_broker.api.gate.TokenGate.token`
(policy, cache-miss limiter, acquisition); these handlers only parse and render.
"""

from __future__ import annotations

import functools
import json

from aiohttp import web

from agent_token_broker.api import policy
from agent_token_broker.api.caller_context import caller_context
from agent_token_broker.api.gate import validated_claims
from agent_token_broker.api.params import Family, parse_query_string
from agent_token_broker.api.policy import Route
from agent_token_broker.api.problems import NO_STORE, ProblemError
from agent_token_broker.api.state import GATE, RUNTIME
from agent_token_broker.cache.token import CachedToken

_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8", **NO_STORE}


def bearer_token(request: web.Request) -> str:
    """The inbound ``Authorization: Bearer`` token, or a 401 problem."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ProblemError(
            401,
            "this route needs an 'Authorization: Bearer <token>' header",
            slug="missing-token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


@functools.lru_cache(maxsize=4096)
def _header_body(token_type: str, value: str) -> bytes:
    """The success body, rendered once per token (hot keys answer the same token many times)."""
    return ('{"authorizationHeader":' + json.dumps(f"{token_type} {value}") + "}").encode()


def token_response(token: CachedToken) -> web.Response:
    body = _header_body(token.meta.get("token_type", "Bearer"), token.value)
    return web.Response(body=body, headers=_JSON_HEADERS)


async def authorization_header(request: web.Request) -> web.Response:
    """``GET /AuthorizationHeader/{api}``: needs a validated inbound user token."""
    query = parse_query_string(request.rel_url.raw_query_string, Family.HEADER)
    token = await request.app[GATE].token(
        Route.HEADER, request.match_info["api"], query, bearer=bearer_token(request), caller=caller_context(request)
    )
    return token_response(token)


async def authorization_header_unauthenticated(request: web.Request) -> web.Response:
    """``GET /AuthorizationHeaderUnauthenticated/{api}``: app or agent-user tokens, no inbound token."""
    query = parse_query_string(request.rel_url.raw_query_string, Family.HEADER)
    token = await request.app[GATE].token(
        Route.HEADER_UNAUTH, request.match_info["api"], query, caller=caller_context(request)
    )
    return token_response(token)


async def validate(request: web.Request) -> web.Response:
    """``GET /Validate``: the inbound token's claims, as Microsoft's sidecar returns them."""
    runtime = request.app[RUNTIME]
    token = bearer_token(request)
    claims = await validated_claims(runtime.validator, token)
    policy.check_validate_scopes(runtime.settings, claims)
    body = json.dumps({"protocol": "Bearer", "token": token, "claims": claims})
    return web.Response(body=body.encode(), headers=_JSON_HEADERS)


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="Healthy")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/AuthorizationHeader/{api}", authorization_header, allow_head=False)
    app.router.add_get(
        "/AuthorizationHeaderUnauthenticated/{api}", authorization_header_unauthenticated, allow_head=False
    )
    app.router.add_get("/Validate", validate, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
