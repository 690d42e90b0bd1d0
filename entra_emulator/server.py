"""aiohttp app factories and the async runner for the emulator.

HTTPS app: OIDC discovery, JWKS, token endpoint, ``/_emulator/`` admin routes.
Plain HTTP app (separate port): managed-identity endpoints (see mi.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from entra_emulator.admin import add_admin_routes
from entra_emulator.demo_api import add_demo_api_routes
from entra_emulator.errors import error_body, tenant_not_found
from entra_emulator.faultio import apply_faults
from entra_emulator.grants import classify, handle_token
from entra_emulator.mi import add_mi_routes
from entra_emulator.state import EmulatorState

STATE: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers={**NO_STORE, **(headers or {})}
    )


def _unknown_tenant(state: EmulatorState, request: web.Request) -> web.Response:
    err = tenant_not_found(request.match_info["tenant"], "invalid_tenant")
    return _json(error_body(err, state.base_url, request.headers.get("client-request-id")), 400)


def discovery_document(state: EmulatorState, tenant: str) -> dict[str, Any]:
    base = f"{state.base_url}/{tenant}"
    return {
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": state.issuer(tenant),
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{state.base_url}/oidc/userinfo",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid",
            "ver", "at_hash", "c_hash", "email",
        ],
        "tenant_region_scope": None,
        "cloud_instance_name": "emulator.local",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }


async def _per_tenant(
    request: web.Request, endpoint: str, answer: Callable[[EmulatorState, str], web.Response]
) -> web.StreamResponse:
    """A per-tenant GET (discovery, JWKS): faults first, Entra's 400 for a tenant it does not know."""
    state = request.app[STATE]
    tenant = request.match_info["tenant"].lower()
    resp, fault = await apply_faults(request, state, target="discovery", endpoint=endpoint, leg="other",
                                     client_id=None, fmi_path=None)
    if resp is not None:
        return resp
    if tenant not in state.directory.tenants:
        state.log.record(endpoint, "other", None, None, 400, 90002, fault)
        return _unknown_tenant(state, request)
    state.log.record(endpoint, "other", None, None, 200, None, fault)
    return answer(state, tenant)


async def discovery(request: web.Request) -> web.StreamResponse:
    return await _per_tenant(request, "discovery", lambda state, tenant: _json(
        discovery_document(state, tenant), headers={"Cache-Control": "max-age=86400, private"}))


async def jwks(request: web.Request) -> web.StreamResponse:
    return await _per_tenant(request, "jwks", lambda state, _tenant: _json(state.keys.jwks()))


async def token(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    tenant = request.match_info["tenant"]
    posted = await request.post()
    form = {k: v for k, v in posted.items() if isinstance(v, str)}
    form = {k: form[k] for k in dict.fromkeys(posted.keys()) if k in form}  # first value wins
    leg = classify(state, form)
    resp, fault = await apply_faults(request, state, target="token", endpoint="token", leg=leg,
                                     client_id=form.get("client_id"), fmi_path=form.get("fmi_path"),
                                     has_claims=bool(form.get("claims")))
    if resp is not None:
        return resp
    correlation = request.headers.get("client-request-id")
    result = handle_token(state, tenant, form, correlation)
    state.log.record("token", result.leg, result.client_id, result.fmi_path, result.status, result.error_code, fault,
                     claims=form.get("claims"))
    headers = {"x-ms-request-id": str(result.body.get("trace_id", ""))} if result.error_code else {}
    if correlation:
        headers["client-request-id"] = correlation
    return _json(result.body, result.status, headers)


async def authorize(request: web.Request) -> web.StreamResponse:
    return web.Response(status=400, text="The emulator does not implement interactive sign-in.")


async def _release_hung(app: web.Application) -> None:
    app[STATE].faults.clear()


def create_app(state: EmulatorState) -> web.Application:
    """The HTTPS application (discovery, JWKS, token endpoint, admin, demo downstream APIs)."""
    app = web.Application(client_max_size=256 * 1024)
    app[STATE] = state
    add_admin_routes(app, state)
    add_demo_api_routes(app, state)
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", discovery)
    app.router.add_get("/{tenant}/discovery/v2.0/keys", jwks)
    app.router.add_get("/{tenant}/discovery/keys", jwks)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    app.router.add_get("/{tenant}/oauth2/v2.0/authorize", authorize)
    app.on_shutdown.append(_release_hung)
    return app


def create_mi_app(state: EmulatorState) -> web.Application:
    """The plain-HTTP managed-identity application (IMDS + App Service protocols)."""
    app = web.Application(client_max_size=64 * 1024)
    app[STATE] = state
    add_mi_routes(app, state)
    app.on_shutdown.append(_release_hung)
    return app


class AsyncEmulator:
    """Runs both listeners inside the current event loop."""

    def __init__(
        self, state_dir: Path, port: int = 0, mi_port: int = 0, mi_secret: str | None = None,
        spec: dict[str, Any] | None = None, host: str = "127.0.0.1", reset_state: bool = False,
    ) -> None:
        self.state = EmulatorState(state_dir, spec, mi_secret, reset_state)
        self._port, self._mi_port, self._host = port, mi_port, host
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        https = web.AppRunner(create_app(self.state), access_log=None, shutdown_timeout=2.0)
        await https.setup()
        site = web.TCPSite(https, self._host, self._port, ssl_context=self.state.tls.server_context())
        await site.start()
        self._runners.append(https)
        port = https.addresses[0][1]
        self.state.base_url = f"https://127.0.0.1:{port}"
        mi = web.AppRunner(create_mi_app(self.state), access_log=None, shutdown_timeout=2.0)
        await mi.setup()
        await web.TCPSite(mi, self._host, self._mi_port).start()
        self._runners.append(mi)
        self.state.mi_url = f"http://127.0.0.1:{mi.addresses[0][1]}"

    async def stop(self) -> None:
        self.state.faults.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
