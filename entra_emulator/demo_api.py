"""Demo downstream APIs on the emulator's HTTPS port, so ``dev`` works offline end to end.

A resource server's view of the emulator's tokens: every request needs ``Authorization:
Bearer <token>``, validated like a real API validates Entra tokens -- RS256 signature against
the emulator's published keys (its JWKS), issuer of the token's tenant, audience of *this* API,
lifetime, then the permission (app role or delegated scope) the route needs. Answers JSON.

``/_demo/graph/v1.0/`` (``demo.DEMO_GRAPH_PATH``), audience ``https://graph.microsoft.com``:

- ``GET me``: the signed-in user (delegated token with ``User.Read``); an app token gets
  Graph's 400 "/me request is only valid with delegated authentication flow".
- ``GET users`` and ``GET users/{id or UPN}``: app role ``User.Read.All`` (or a delegated
  ``User.Read.All``/``User.ReadBasic.All`` scope).

``/_demo/api/`` (``demo.DEMO_API_PATH``), audience ``api://demo-downstream``: any method and
path, app role ``Data.Read`` or delegated scope ``access_as_user``; echoes the request and who
called (``caller``: the token's identity claims, never the token).

Errors use Graph's shape ``{"error": {"code", "message"}}``: 401 (``WWW-Authenticate: Bearer
error="invalid_token"``) for a missing or invalid token, 403 for a missing permission.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from aiohttp import web

from entra_emulator import demo
from entra_emulator.assertions import jws_header, verify_jwt
from entra_emulator.state import EmulatorState
from entra_emulator.tenant import User

GRAPH_AUDIENCES = frozenset({demo.GRAPH_RESOURCE, demo.GRAPH_RESOURCE + "/", demo.GRAPH_APP_ID})
DEMO_AUDIENCES = frozenset({demo.DEMO_API_APP_ID, demo.DEMO_API_RESOURCE})
CALLER_CLAIMS = ("idtyp", "tid", "oid", "sub", "azp", "appid", "xms_par_app_azp", "upn", "roles", "scp")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _invalid(message: str) -> ApiError:
    return ApiError(401, "InvalidAuthenticationToken", message)


def validate_bearer(state: EmulatorState, request: web.Request, audiences: frozenset[str]) -> dict[str, Any]:
    """The claims of the request's bearer token if it is valid for an API with ``audiences``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _invalid("Access token is empty.")
    header = jws_header(token)
    if header is None:
        raise _invalid("IDX14100: JWT is not well formed.")
    key = state.keys.find(header.get("kid"))
    if key is None or header.get("alg") != "RS256":
        raise _invalid("IDX10503: Signature validation failed. The token's kid is not in the issuer's JWKS.")
    try:
        claims = verify_jwt(token, key.public, ["RS256"], state.verified, f"sig:{key.kid}")
    except jwt.ExpiredSignatureError:
        raise _invalid("Lifetime validation failed. The token is expired.") from None
    except jwt.PyJWTError:
        raise _invalid("IDX10511: Signature validation failed.") from None
    tid = str(claims.get("tid", ""))
    if tid not in state.directory.tenants or claims.get("iss") != state.issuer(tid):
        raise _invalid(f"IDX10205: Issuer validation failed. Issuer: '{claims.get('iss')}'.")
    if claims.get("aud") not in audiences:
        raise _invalid(f"IDX10214: Audience validation failed. Audience: '{claims.get('aud')}'.")
    return claims


def _scopes(claims: dict[str, Any]) -> set[str]:
    return set(str(claims.get("scp", "")).split())


def _roles(claims: dict[str, Any]) -> set[str]:
    roles = claims.get("roles")
    return {str(r) for r in roles} if isinstance(roles, list) else set()


def _require(claims: dict[str, Any], roles: set[str], scopes: set[str]) -> None:
    delegated = claims.get("idtyp") == "user" or "scp" in claims
    granted = _scopes(claims) & scopes if delegated else _roles(claims) & roles
    if not granted:
        raise ApiError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def _user_json(base: str, user: User) -> dict[str, Any]:
    return {
        "@odata.context": f"{base}{demo.DEMO_GRAPH_PATH}$metadata#users/$entity",
        "id": user.oid,
        "userPrincipalName": user.upn,
        "displayName": user.upn.split("@")[0],
        "mail": user.upn,
    }


def _caller(claims: dict[str, Any]) -> dict[str, Any]:
    return {name: claims[name] for name in CALLER_CLAIMS if name in claims}


def _wrap(state: EmulatorState, audiences: frozenset[str],
          fn: Callable[[web.Request, dict[str, Any]], Awaitable[Any]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            claims = validate_bearer(state, request, audiences)
            return _json(await fn(request, claims))
        except ApiError as err:
            headers = None
            if err.status == 401:
                headers = {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{err.message}"'}
            return _json({"error": {"code": err.code, "message": err.message}}, err.status, headers)

    return handler


def add_demo_api_routes(app: web.Application, state: EmulatorState) -> None:
    async def graph(request: web.Request, claims: dict[str, Any]) -> Any:
        path = request.match_info["path"].strip("/")
        tid = str(claims["tid"])
        if request.method != "GET":
            raise ApiError(405, "Request_BadRequest", f"{request.method} is not supported by this demo API.")
        if path == "me":
            if claims.get("idtyp") != "user":
                raise ApiError(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
            _require(claims, set(), {"User.Read", "User.ReadWrite", "User.Read.All"})
            user = state.directory.user(str(claims.get("oid", "")))
            if user is None:
                raise ApiError(404, "Request_ResourceNotFound", "The signed-in user does not exist.")
            return _user_json(state.base_url, user)
        segments = path.split("/")
        if segments[0] == "users" and len(segments) <= 2:
            _require(claims, {"User.Read.All"}, {"User.Read.All", "User.ReadBasic.All"})
            users = [u for u in state.directory.users.values() if u.tenant == tid]
            if len(segments) == 1:
                return {"@odata.context": f"{state.base_url}{demo.DEMO_GRAPH_PATH}$metadata#users",
                        "value": [_user_json(state.base_url, u) for u in users]}
            user = state.directory.user(segments[1])
            if user is None or user.tenant != tid:
                raise ApiError(404, "Request_ResourceNotFound",
                               f"Resource '{segments[1]}' does not exist or one of its queried reference-property "
                               "objects are not present.")
            return _user_json(state.base_url, user)
        raise ApiError(400, "BadRequest", f"Resource not found for the segment '{segments[0]}'.")

    async def echo(request: web.Request, claims: dict[str, Any]) -> Any:
        _require(claims, {"Data.Read"}, {"access_as_user"})
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        return {
            "api": "demo", "method": request.method, "path": "/" + request.match_info["path"],
            "query": dict(request.query), "caller": _caller(claims), "body": body,
        }

    app.router.add_route("*", demo.DEMO_GRAPH_PATH + "{path:.*}", _wrap(state, GRAPH_AUDIENCES, graph))
    app.router.add_route("*", demo.DEMO_API_PATH + "{path:.*}", _wrap(state, DEMO_AUDIENCES, echo))
