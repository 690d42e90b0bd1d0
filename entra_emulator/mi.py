"""Managed-identity endpoints (plain HTTP, separate port).

- App Service: ``GET /msi/token?api-version=2019-08-01&resource=R[&client_id=]`` with
  ``X-IDENTITY-HEADER: <secret>`` -> ``{access_token, expires_on, resource, token_type, client_id}``.
- IMDS: ``GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R[&client_id=]``
  with ``Metadata: true`` -> ``{access_token, expires_in, expires_on, resource, token_type, ...}``.

Tokens for ``api://AzureADTokenExchange`` have ``aud`` = the exchange app id and
``sub`` = the MI principal id, so the token endpoint accepts them as blueprint
assertions through the blueprint's MI federated identity credential.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from aiohttp import web

from entra_emulator import demo
from entra_emulator.faultio import apply_faults
from entra_emulator.state import EmulatorState
from entra_emulator.tenant import ManagedIdentity

EXCHANGE_RESOURCES = {demo.TOKEN_EXCHANGE_RESOURCE.lower(), demo.TOKEN_EXCHANGE_APP_ID}


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


class MiError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _pick_identity(state: EmulatorState, query: Any) -> ManagedIdentity:
    client_id = query.get("client_id")
    object_id = query.get("object_id") or query.get("principal_id")
    if client_id:
        mi = state.directory.mi_by_client_id(client_id)
    elif object_id:
        mi = next((m for m in state.directory.managed_identities.values()
                   if m.principal_id == object_id.lower()), None)
    else:
        mi = state.directory.mi_by_client_id(None)
    if mi is None:
        raise MiError(400, "invalid_request", "Identity not found")
    return mi


def _audience(state: EmulatorState, resource: str | None) -> str:
    if not resource:
        raise MiError(400, "invalid_request", "Required query variable 'resource' is missing")
    if resource.rstrip("/").lower() in EXCHANGE_RESOURCES:
        return demo.TOKEN_EXCHANGE_APP_ID
    res = state.directory.resource(resource)
    if res is None:
        raise MiError(400, "invalid_resource", f"AADSTS500011: The resource principal named {resource} was "
                      "not found in the tenant.")
    return res.audience


async def _serve(request: web.Request, state: EmulatorState, protocol: str) -> web.StreamResponse:
    query = request.rel_url.query
    client_id = query.get("client_id")
    resp, fault = await apply_faults(request, state, target="mi", endpoint="mi", leg="mi",
                                     client_id=client_id, fmi_path=None)
    if resp is not None:
        return resp
    try:
        if protocol == "appservice":
            header = request.headers.get("X-IDENTITY-HEADER", "")
            if not hmac.compare_digest(header.encode(), state.mi_secret.encode()):
                raise MiError(401, "unauthorized", "X-IDENTITY-HEADER is missing or invalid")
            if query.get("api-version") != "2019-08-01":
                raise MiError(400, "invalid_request", "api-version must be 2019-08-01")
        else:
            if request.headers.get("Metadata", "").lower() != "true":
                raise MiError(400, "invalid_request", "Required metadata header not specified")
            if not query.get("api-version"):
                raise MiError(400, "invalid_request", "Required query variable 'api-version' is missing")
        mi = _pick_identity(state, query)
        audience = _audience(state, query.get("resource"))
    except MiError as err:
        state.log.record("mi", "mi", client_id, None, err.status, None, fault)
        if protocol == "appservice":
            return _json({"statusCode": err.status, "message": err.description, "error": err.error}, err.status)
        return _json({"error": err.error, "error_description": err.description}, err.status)
    minted = state.minter.mi_token(mi, audience, str(query.get("resource")))
    state.log.record("mi", "mi", client_id, None, 200, None, fault)
    expires_on = int(time.time()) + minted.expires_in
    body: dict[str, Any] = {
        "access_token": minted.token,
        "expires_on": str(expires_on),
        "resource": query.get("resource"),
        "token_type": "Bearer",
        "client_id": mi.client_id,
    }
    if protocol == "imds":
        body.update(expires_in=str(minted.expires_in), ext_expires_in=str(minted.expires_in),
                    not_before=str(expires_on - minted.expires_in))
    return _json(body)


def add_mi_routes(app: web.Application, state: EmulatorState) -> None:
    async def app_service(request: web.Request) -> web.StreamResponse:
        return await _serve(request, state, "appservice")

    async def imds(request: web.Request) -> web.StreamResponse:
        return await _serve(request, state, "imds")

    app.router.add_get("/msi/token", app_service)
    app.router.add_get("/metadata/identity/oauth2/token", imds)
