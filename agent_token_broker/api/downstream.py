"""``POST /DownstreamApi/{api}`` and ``POST /DownstreamApiUnauthenticated/{api}``.

The token comes from the same choke point as on the header routes
(:meth:`agent_token_broker.api.gate.TokenGate.token`), then the configured API is called and its answer
wrapped as Microsoft's sidecar does: ``{"statusCode","headers","content"}`` with
an outer 200 whatever the downstream status. A downstream 401 carrying a CAE
claims challenge drops the rejected token, acquires a new one with the claims
and retries once.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from agent_token_broker.api import policy
from agent_token_broker.api.caller_context import caller_context
from agent_token_broker.api.downstream_http import (
    DownstreamResult,
    build_call,
    claims_challenge,
    read_capped,
    send,
)
from agent_token_broker.api.gate import Challenge
from agent_token_broker.api.params import Family, parse_query_string
from agent_token_broker.api.policy import Route
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.api.routes import JSON_HEADERS, bearer_token
from agent_token_broker.api.state import ApiServices, Endpoint
from agent_token_broker.cache.token import CachedToken
from agent_token_broker.runtime import Runtime
from agent_token_broker.settings import DownstreamApiConfig

log = logging.getLogger("agent_token_broker.api.downstream")


def _configured_api(runtime: Runtime, api: str) -> DownstreamApiConfig:
    config = runtime.downstream_api(api)
    if config is None and runtime.settings.strict:
        raise policy.unknown_api(api)
    if config is None or not config.base_url:
        raise ProblemError(
            400,
            f"the API '{api}' has no base URL: configure DownstreamApis__{api}__BaseUrl",
            slug="no-base-url",
            title=f"no BaseUrl configured for API: {api}",
            config_key=f"DownstreamApis__{api}__BaseUrl",
        )
    return config


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    if not request.body_exists:
        return b""
    too_large = ProblemError(
        413,
        f"the request body exceeds Broker__Downstream__MaxRequestBytes ({limit} bytes)",
        slug="body-too-large",
    )
    return await read_capped(request.content, request.content_length, limit, too_large)


def _authorization(token: CachedToken) -> str:
    return f"{token.meta.get('token_type', 'Bearer')} {token.value}"


async def _call(services: ApiServices, request: web.BaseRequest, api: str, *, authenticated: bool) -> web.Response:
    runtime, gate = services.runtime, services.gate
    query = parse_query_string(request.rel_url.raw_query_string, Family.DOWNSTREAM)
    route = Route.CALL if authenticated else Route.CALL_UNAUTH
    bearer = bearer_token(request) if authenticated else None
    config = _configured_api(runtime, api)
    limits = runtime.settings.downstream
    body = await _read_body(request, limits.max_request_bytes)
    call = build_call(config, query.call_overrides, request.headers.get("Content-Type"), body)

    async def attempt(token: CachedToken) -> DownstreamResult:
        return await send(
            runtime.session,
            call,
            _authorization(token),
            total_seconds=limits.timeout_seconds,
            connect_seconds=runtime.settings.upstream.connect_timeout_seconds,
            max_bytes=limits.max_response_bytes,
            allow_redirects=runtime.settings.sidecar.allow_outbound_redirects,
            tracer=runtime.tracer,
        )

    # The call is built (and its options validated) first, so a malformed one costs Entra nothing;
    # the gate then applies the policy (overrides, allow-lists, the token's audience) and acquires.
    caller = caller_context(request)
    token = await gate.token(route, api, query, bearer=bearer, caller=caller)
    used = [token.value]
    result = await attempt(token)
    if result.status == 401:
        claims = claims_challenge(result.header_values("WWW-Authenticate"))
        if claims is not None:
            log.info("downstream API '%s' sent a claims challenge; retrying once with a new token", api)
            try:
                retry_token = await gate.token(
                    route, api, query, bearer=bearer, challenge=Challenge(claims, token.value), caller=caller
                )
            except ProblemError as err:
                log.warning(
                    "could not acquire a token satisfying the downstream API's claims challenge "
                    "(%s; error %s, correlation %s); returning the API's 401",
                    err.title,
                    err.extensions.get("errorCode"),
                    err.extensions.get("correlationId"),
                )
            else:
                used.append(retry_token.value)
                result = await attempt(retry_token)
    body_json = json.dumps(result.as_json(used))
    return web.Response(body=body_json.encode(), headers=JSON_HEADERS)


def endpoints(services: ApiServices) -> list[Endpoint]:
    """``POST /DownstreamApi/{api}`` (validated inbound token; OBO or app token to call the API) and
    ``POST /DownstreamApiUnauthenticated/{api}`` (the blueprint's or agent's own token); POST only,
    as in Microsoft's sidecar (other methods get 405)."""

    async def downstream_api(request: web.BaseRequest, api: str | None) -> web.StreamResponse:
        assert api is not None
        return await _call(services, request, api, authenticated=True)

    async def downstream_api_unauthenticated(request: web.BaseRequest, api: str | None) -> web.StreamResponse:
        assert api is not None
        return await _call(services, request, api, authenticated=False)

    return [
        Endpoint("POST", "/DownstreamApi/{api}", downstream_api),
        Endpoint("POST", "/DownstreamApiUnauthenticated/{api}", downstream_api_unauthenticated),
    ]
