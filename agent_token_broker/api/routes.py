"""The Microsoft-compatible token routes: HTTP in, :class:`TokenRequest` out, token or problem back."""

from __future__ import annotations

import functools
import json
import logging

from aiohttp import web

from agent_token_broker.api import policy
from agent_token_broker.api.limits import admit_cache_miss
from agent_token_broker.api.params import ParsedQuery, parse_query_string
from agent_token_broker.api.problems import NO_STORE, ProblemError, retry_after_header
from agent_token_broker.api.state import RUNTIME
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.runtime import REQUEST_MEMO_SIZE, Runtime
from agent_token_broker.tokens import Flow, TokenRequest
from agent_token_broker.validation import InsufficientScope, InvalidToken, ValidatorUnavailable

log = logging.getLogger("agent_token_broker.api")

ROUTE_AUTH = "GetAuthorizationHeader"
ROUTE_UNAUTH = "GetAuthorizationHeaderUnauthenticated"
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


async def validated_claims(
    runtime: Runtime, token: str, *, require_validate_scopes: bool = False
) -> dict[str, object]:
    try:
        return await runtime.validator.validate(token)
    except InsufficientScope as exc:
        raise ProblemError(
            403, f"the token is not allowed here: {exc.reason}", slug="insufficient-scope"
        ) from None
    except InvalidToken as exc:
        raise ProblemError(
            401,
            f"the bearer token is not valid: {exc.reason}",
            slug="invalid-token",
            headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{exc.reason}"'},
        ) from None
    except ValidatorUnavailable:
        raise ProblemError(
            503,
            "the authority's signing keys could not be fetched",
            slug="authority-unavailable",
            headers=retry_after_header(5),
        ) from None


def _scopes_for(runtime: Runtime, api: str, query: ParsedQuery) -> tuple[str, ...]:
    config = runtime.downstream_api(api)
    if config is None and runtime.settings.strict:
        raise ProblemError(404, f"no downstream API named '{api}' is configured", slug="unknown-api")
    if query.scopes is not None:
        return query.scopes
    if config is None or not config.scopes:
        raise ProblemError(
            400,
            f"No scopes found for the API '{api}': configure DownstreamApis__{api}__Scopes",
            slug="no-scopes",
        )
    return tuple(config.scopes)


def _check_overrides(runtime: Runtime, route: str, query: ParsedQuery, *, implied: frozenset[str]) -> None:
    used = query.token_overrides - implied
    if used and not runtime.settings.sidecar.allow_overrides.get(route, False):
        names = ", ".join(sorted("optionsOverride." + name for name in used))
        raise ProblemError(
            400,
            f"{names} not allowed on this route (set Sidecar__AllowOverrides__{route}=true to allow)",
            slug="override-not-allowed",
        )


@functools.lru_cache(maxsize=4096)
def _header_body(token_type: str, value: str) -> bytes:
    """The success body, rendered once per token (hot keys answer the same token many times)."""
    return ('{"authorizationHeader":' + json.dumps(f"{token_type} {value}") + "}").encode()


def token_response(token: CachedToken) -> web.Response:
    body = _header_body(token.meta.get("token_type", "Bearer"), token.value)
    return web.Response(body=body, headers=_JSON_HEADERS)


def acquire_problem(err: AcquireError) -> ProblemError:
    """Map an acquisition failure to the API's problem (401 refused, 503 unreachable/throttled)."""
    if err.transient:
        return ProblemError(
            503,
            f"the authority is unavailable and no valid cached token exists: {err}",
            slug="authority-unavailable",
            headers=retry_after_header(err.retry_after),
            errorCode=err.error_code,
            correlationId=err.correlation_id,
        )
    return ProblemError(
        401, str(err), slug="token-refused", errorCode=err.error_code, correlationId=err.correlation_id
    )


async def serve_token(
    runtime: Runtime, req: TokenRequest, key: tuple[object, ...] | None = None
) -> web.Response:
    """Answer ``req`` from the cache or by acquiring; ``key`` = its precomputed cache key, if known."""
    token = runtime.tokens.peek(req) if key is None else runtime.cache.peek(key)
    if token is not None:
        return token_response(token)
    admit_cache_miss(req, runtime.tokens.key_for(req))  # 429 past Broker__Limits__CacheMiss*
    try:
        token = await runtime.tokens.get(req)
    except AcquireError as err:
        raise acquire_problem(err) from None
    return token_response(token)


def _agent_request(
    query: ParsedQuery, flow_if_agent: Flow, scopes: tuple[str, ...], **extra: object
) -> TokenRequest:
    common = {
        "scopes": scopes,
        "tenant": query.tenant,
        "claims": query.claims,
        "force_refresh": query.force_refresh,
        "correlation_id": query.correlation_id,
    }
    if query.agent and (query.username or query.user_object_id):
        return TokenRequest(
            Flow.AGENT_USER,
            agent=query.agent,
            username=query.username,
            user_object_id=query.user_object_id,
            **common,  # type: ignore[arg-type]
        )
    return TokenRequest(flow_if_agent, agent=query.agent, **common, **extra)  # type: ignore[arg-type]


async def authenticated_token_request(
    request: web.Request, runtime: Runtime, query: ParsedQuery, *, route: str = ROUTE_AUTH
) -> TokenRequest:
    """The token an authenticated route (``/AuthorizationHeader``, ``/DownstreamApi``) asks for.

    ``route`` names the ``Sidecar__AllowOverrides`` flag that gates token overrides.
    """
    _check_overrides(runtime, route, query, implied=frozenset())
    token = bearer_token(request)
    claims = await validated_claims(runtime, token)
    policy.check_caller_token(runtime.settings, claims)
    api = request.match_info["api"]
    scopes = _scopes_for(runtime, api, query)
    policy.check_request(runtime.settings, api, query)
    config = runtime.downstream_api(api)
    app_token = query.request_app_token or bool(config and config.request_app_token)
    if query.agent:
        flow = Flow.AGENT_APP if app_token else Flow.AGENT_OBO
    else:
        flow = Flow.BLUEPRINT_APP if app_token else Flow.BLUEPRINT_OBO
    assertion = None if flow in (Flow.AGENT_APP, Flow.BLUEPRINT_APP) else token
    return _agent_request(query, flow, scopes, user_assertion=assertion)


def unauthenticated_token_request(
    request: web.Request, runtime: Runtime, query: ParsedQuery, *, route: str = ROUTE_UNAUTH
) -> TokenRequest:
    """The token an unauthenticated route asks for: app or agent-user tokens, no inbound token."""
    implied = frozenset({"requestapptoken"}) if query.request_app_token else frozenset()
    _check_overrides(runtime, route, query, implied=implied)
    api = request.match_info["api"]
    scopes = _scopes_for(runtime, api, query)
    policy.check_request(runtime.settings, api, query)
    flow = Flow.AGENT_APP if query.agent else Flow.BLUEPRINT_APP
    return _agent_request(query, flow, scopes)


async def authorization_header(request: web.Request) -> web.Response:
    """``GET /AuthorizationHeader/{api}``: needs a validated inbound user token."""
    runtime = request.app[RUNTIME]
    query = parse_query_string(request.rel_url.raw_query_string)
    req = await authenticated_token_request(request, runtime, query)
    return await serve_token(runtime, req)


async def authorization_header_unauthenticated(request: web.Request) -> web.Response:
    """``GET /AuthorizationHeaderUnauthenticated/{api}``: app or agent-user tokens, no inbound token."""
    runtime = request.app[RUNTIME]
    # The TokenRequest is a pure function of (API name, query, settings): remember it, so hot
    # callers skip parsing and policy checks. Only accepted requests are remembered.
    memo = runtime.request_memo
    memo_key = (request.match_info["api"], request.rel_url.raw_query_string)
    hit = memo.get(memo_key)
    if hit is None:
        req = unauthenticated_token_request(request, runtime, parse_query_string(memo_key[1]))
        plain = not (req.force_refresh or req.claims)
        hit = (req, runtime.tokens.key_for(req) if plain else None)
        if len(memo) >= REQUEST_MEMO_SIZE:
            memo.clear()  # bounded; hot entries come back on their next request
        memo[memo_key] = hit
    return await serve_token(runtime, *hit)


async def validate(request: web.Request) -> web.Response:
    """``GET /Validate``: the inbound token's claims, as Microsoft's sidecar returns them."""
    runtime = request.app[RUNTIME]
    token = bearer_token(request)
    claims = await validated_claims(runtime, token)
    wanted = runtime.settings.azure_ad.scopes
    if wanted:
        granted = set(str(claims.get("scp", "")).split()) | set(_as_list(claims.get("roles")))
        if not granted.intersection(wanted):
            raise ProblemError(
                403, "the token has none of the scopes in AzureAd__Scopes", slug="insufficient-scope"
            )
    body = json.dumps({"protocol": "Bearer", "token": token, "claims": claims})
    return web.Response(body=body.encode(), headers=_JSON_HEADERS)


def _as_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="Healthy")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/AuthorizationHeader/{api}", authorization_header, allow_head=False)
    app.router.add_get(
        "/AuthorizationHeaderUnauthenticated/{api}", authorization_header_unauthenticated, allow_head=False
    )
    app.router.add_get("/Validate", validate, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
