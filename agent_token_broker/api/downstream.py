"""``POST /DownstreamApi/{api}`` and ``POST /DownstreamApiUnauthenticated/{api}``.

The token is chosen exactly as on the header routes (shared functions in
:mod:`agent_token_broker.api.routes`), then the configured API is called and its answer
wrapped as Microsoft's sidecar does: ``{"statusCode","headers","content"}`` with
an outer 200 whatever the downstream status. A downstream 401 carrying a CAE
claims challenge drops the rejected token, acquires a new one with the claims
and retries once.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from aiohttp import web

from agent_token_broker.api.downstream_http import DownstreamResult, build_call, claims_challenge, send
from agent_token_broker.api.params import ParsedQuery, parse_query_string
from agent_token_broker.api.problems import NO_STORE, ProblemError
from agent_token_broker.api.routes import (
    acquire_problem,
    authenticated_token_request,
    unauthenticated_token_request,
)
from agent_token_broker.api.state import RUNTIME
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.runtime import Runtime
from agent_token_broker.settings import DownstreamApiConfig
from agent_token_broker.tokens import TokenRequest

log = logging.getLogger("agent_token_broker.api.downstream")

ROUTE_CALL = "CallDownstreamApi"
ROUTE_CALL_UNAUTH = "CallDownstreamApiUnauthenticated"
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8", **NO_STORE}


def _configured_api(runtime: Runtime, api: str) -> DownstreamApiConfig:
    config = runtime.downstream_api(api)
    if config is None or not config.base_url:
        raise ProblemError(
            400,
            f"the API '{api}' has no base URL: configure DownstreamApis__{api}__BaseUrl",
            slug="no-base-url",
        )
    return config


def _check_call_overrides(runtime: Runtime, route: str, query: ParsedQuery) -> None:
    if query.downstream and not runtime.settings.sidecar.allow_overrides.get(route, False):
        raise ProblemError(
            400,
            f"optionsOverride request options are not allowed on this route "
            f"(set Sidecar__AllowOverrides__{route}=true to allow)",
            slug="override-not-allowed",
        )


async def _read_body(request: web.Request, limit: int) -> bytes:
    if not request.body_exists:
        return b""
    too_large = ProblemError(
        413,
        f"the request body exceeds Broker__Downstream__MaxRequestBytes ({limit} bytes)",
        slug="body-too-large",
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


async def _token(runtime: Runtime, req: TokenRequest) -> CachedToken:
    token = runtime.tokens.peek(req)
    if token is not None:
        return token
    try:
        return await runtime.tokens.get(req)
    except AcquireError as err:
        raise acquire_problem(err) from None


async def _token_for_claims(
    runtime: Runtime, req: TokenRequest, rejected: CachedToken, claims: str
) -> CachedToken | None:
    """A token to retry with after ``rejected`` drew a claims challenge, or None if none can be had.

    The rejected token is evicted (unless a concurrent call already replaced it), so the
    token acquired with the claims takes its place for every later request.
    """
    key = runtime.tokens.key_for(req)
    current = runtime.cache.peek(key)
    if current is not None and current.value != rejected.value:
        return current  # a concurrent challenge already replaced it
    runtime.cache.evict(key)
    try:
        return await runtime.tokens.get(dataclasses.replace(req, claims=claims, force_refresh=False))
    except AcquireError as err:
        log.warning(
            "could not acquire a token satisfying the downstream API's claims challenge "
            "(error %s, correlation %s); returning the API's 401",
            err.error_code,
            err.correlation_id,
        )
        return None


def _authorization(token: CachedToken) -> str:
    return f"{token.meta.get('token_type', 'Bearer')} {token.value}"


async def _call(request: web.Request, *, authenticated: bool) -> web.Response:
    runtime = request.app[RUNTIME]
    query = parse_query_string(request.rel_url.raw_query_string)
    route = ROUTE_CALL if authenticated else ROUTE_CALL_UNAUTH
    if authenticated:
        req = await authenticated_token_request(request, runtime, query, route=route)
    else:
        req = unauthenticated_token_request(request, runtime, query, route=route)
    api = request.match_info["api"]
    config = _configured_api(runtime, api)
    _check_call_overrides(runtime, route, query)
    limits = runtime.settings.downstream
    body = await _read_body(request, limits.max_request_bytes)
    call = build_call(config, query.downstream, request.headers.get("Content-Type"), body)

    async def attempt(token: CachedToken) -> DownstreamResult:
        return await send(
            runtime.session,
            call,
            _authorization(token),
            total_seconds=limits.timeout_seconds,
            connect_seconds=runtime.settings.upstream.connect_timeout_seconds,
            max_bytes=limits.max_response_bytes,
            allow_redirects=runtime.settings.sidecar.allow_outbound_redirects,
        )

    token = await _token(runtime, req)
    used = [token.value]
    result = await attempt(token)
    if result.status == 401:
        claims = claims_challenge(result.header_values("WWW-Authenticate"))
        if claims is not None:
            log.info("downstream API '%s' sent a claims challenge; retrying once with a new token", api)
            retry_token = await _token_for_claims(runtime, req, token, claims)
            if retry_token is not None:
                used.append(retry_token.value)
                result = await attempt(retry_token)
    body_json = json.dumps(result.as_json(used))
    return web.Response(body=body_json.encode(), headers=_JSON_HEADERS)


async def downstream_api(request: web.Request) -> web.Response:
    """``POST /DownstreamApi/{api}``: validated inbound token; OBO (or app token) to call the API."""
    return await _call(request, authenticated=True)


async def downstream_api_unauthenticated(request: web.Request) -> web.Response:
    """``POST /DownstreamApiUnauthenticated/{api}``: the blueprint's or agent's own token."""
    return await _call(request, authenticated=False)


def add_downstream_routes(app: web.Application) -> None:
    """POST only, as in Microsoft's sidecar (other methods get 405)."""
    app.router.add_post("/DownstreamApi/{api}", downstream_api)
    app.router.add_post("/DownstreamApiUnauthenticated/{api}", downstream_api_unauthenticated)
