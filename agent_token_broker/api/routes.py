"""The Microsoft-compatible header routes and ``/Validate``: HTTP in, the gate's token out.

The token itself always comes from :meth:`agent_token_broker.api.gate.TokenGate.token`
(policy, cache-miss limiter, acquisition); these handlers only parse and render. The
front answers the unauthenticated route's cache hits itself, from the same gate
(:meth:`agent_token_broker.api.gate.TokenGate.hit`) and the same rendering
(:func:`token_response`).
"""

from __future__ import annotations

import json

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from agent_token_broker.api import policy
from agent_token_broker.api.caller_context import caller_context
from agent_token_broker.api.gate import validated_claims
from agent_token_broker.api.params import Family, parse_query_string
from agent_token_broker.api.policy import Route
from agent_token_broker.api.problems import NO_STORE, ProblemError
from agent_token_broker.api.state import ApiServices, Endpoint
from agent_token_broker.cache.token import CachedToken

JSON_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json; charset=utf-8", **NO_STORE}))


def bearer_token(request: web.BaseRequest) -> str:
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


def token_response(token: CachedToken) -> web.Response:
    """The success answer of the header routes: the token's pre-rendered body (see :class:`CachedToken`)."""
    return web.Response(body=token.answer, headers=JSON_HEADERS)


def endpoints(api: ApiServices) -> list[Endpoint]:
    """``GET /AuthorizationHeader/{api}``, ``GET /AuthorizationHeaderUnauthenticated/{api}``,
    ``GET /Validate`` and ``GET /healthz``."""
    gate, runtime = api.gate, api.runtime

    async def authorization_header(request: web.BaseRequest, name: str | None) -> web.StreamResponse:
        """Needs a validated inbound user token."""
        query = parse_query_string(request.rel_url.raw_query_string, Family.HEADER)
        token = await gate.token(
            Route.HEADER, name, query, bearer=bearer_token(request), caller=caller_context(request)
        )
        return token_response(token)

    async def authorization_header_unauthenticated(
        request: web.BaseRequest, name: str | None
    ) -> web.StreamResponse:
        """App or agent-user tokens, no inbound token."""
        raw = request.rel_url.raw_query_string
        query = parse_query_string(raw, Family.HEADER)
        token = await gate.token(Route.HEADER_UNAUTH, name, query, caller=caller_context(request), raw_query=raw)
        return token_response(token)

    async def validate(request: web.BaseRequest, _name: str | None) -> web.StreamResponse:
        """The inbound token's claims, as Microsoft's sidecar returns them."""
        token = bearer_token(request)
        claims = await validated_claims(runtime.validator, token)
        policy.check_validate_scopes(runtime.settings, claims)
        body = json.dumps({"protocol": "Bearer", "token": token, "claims": claims})
        return web.Response(body=body.encode(), headers=JSON_HEADERS)

    return [
        Endpoint("GET", "/AuthorizationHeader/{api}", authorization_header),
        Endpoint(
            "GET",
            "/AuthorizationHeaderUnauthenticated/{api}",
            authorization_header_unauthenticated,
            hit=Route.HEADER_UNAUTH,
        ),
        Endpoint("GET", "/Validate", validate),
        Endpoint("GET", "/healthz", healthz),
    ]


async def healthz(_request: web.BaseRequest, _api: str | None = None) -> web.StreamResponse:
    """Liveness: both listeners' ``/healthz`` (the ops app calls it with the request only)."""
    return web.Response(text="Healthy")
