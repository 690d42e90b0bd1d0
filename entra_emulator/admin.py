"""Admin/test endpoints under ``/_emulator/`` on the HTTPS port (JSON in/out).

See the module docstring of ``entra_emulator.runner`` for the client API.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from aiohttp import web

from entra_emulator import demo
from entra_emulator.faults import parse_fault
from entra_emulator.state import EmulatorState
from entra_emulator.tenant import CredentialKinds, Directory, Resource, grant_delegated

CONSENT_KINDS = ("application", "delegated")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise AdminError(400, "body must be JSON") from None
    if not isinstance(data, dict):
        raise AdminError(400, "body must be a JSON object")
    return data


def _wrap(fn: Callable[[web.Request], Awaitable[Any]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return _json(await fn(request))
        except AdminError as err:
            return _json({"error": str(err)}, err.status)
        except (ValueError, TypeError, KeyError) as err:
            return _json({"error": f"bad request: {err}"}, 400)

    return handler


def add_admin_routes(app: web.Application, state: EmulatorState) -> None:
    def directory() -> Directory:  # reset replaces the directory object
        return state.directory

    async def reset(request: web.Request) -> Any:
        state.reset()
        return {"ok": True}

    async def log(request: web.Request) -> Any:
        since = request.rel_url.query.get("since")
        return state.log.snapshot(int(since) if since else None)

    async def add_fault(request: web.Request) -> Any:
        fault = parse_fault(await _body(request))
        if request.rel_url.query.get("replace") == "true":
            state.faults.clear()  # in the same step: no request slips through between the two
        return {"id": state.faults.add(fault)}

    async def list_faults(request: web.Request) -> Any:
        return {"faults": state.faults.active()}

    async def clear_faults(request: web.Request) -> Any:
        state.faults.clear()
        return {"ok": True}

    def _agent(request: web.Request) -> Any:
        agent = directory().agents.get(request.match_info["id"].lower())
        if agent is None:
            raise AdminError(404, "unknown agent identity")
        return agent

    def _blueprint(request: web.Request) -> Any:
        bp = directory().blueprints.get(request.match_info["id"].lower())
        if bp is None:
            raise AdminError(404, "unknown blueprint")
        return bp

    async def agent_switch(request: web.Request) -> Any:
        _agent(request).disabled = request.match_info["action"] == "disable"
        return {"ok": True}

    def _tenant(body: dict[str, Any]) -> str | None:
        tenant = body.get("tenant")
        if tenant is None:
            return None
        tenant = str(tenant).lower()
        if tenant not in directory().tenants:
            raise AdminError(404, "unknown tenant")
        return tenant

    async def blueprint_switch(request: web.Request) -> Any:
        """Disable or enable the blueprint: everywhere, or (body ``tenant``) its service
        principal in that tenant only."""
        bp, off = _blueprint(request), request.match_info["action"] == "disable"
        tenant = _tenant(await _body(request))
        if tenant is None:
            bp.disabled = off
        elif off:
            bp.disabled_in.add(tenant)
        else:
            bp.disabled_in.discard(tenant)
        return {"ok": True}

    async def blueprint_install(request: web.Request) -> Any:
        """Give the blueprint a service principal in another tenant (body ``tenant``)."""
        bp, tenant = _blueprint(request), _tenant(await _body(request))
        if tenant is None:
            raise AdminError(400, "give the 'tenant' to install the blueprint in")
        if tenant != bp.tenant:
            bp.installed_in.add(tenant)
        return {"ok": True}

    def _consent_kinds(body: dict[str, Any]) -> tuple[str, ...]:
        kind = body.get("kind")
        if kind is None:
            return CONSENT_KINDS
        if kind not in CONSENT_KINDS:
            raise AdminError(400, f"kind must be one of {CONSENT_KINDS}")
        return (str(kind),)

    async def _consent_request(request: web.Request) -> tuple[dict[str, Any], str, Resource]:
        """The body of a consent change, its ``client_id`` (lower-case) and its ``resource``."""
        body = await _body(request)
        res = directory().resource(str(body["resource"]))
        if res is None:
            raise AdminError(404, "unknown resource")
        return body, str(body["client_id"]).lower(), res

    async def revoke_consent(request: web.Request) -> Any:
        """Revoke a client's consent on a resource: application and delegated (all users'
        and each user's own), or only ``kind``; with ``user``, only that user's own consent."""
        body, client_id, res = await _consent_request(request)
        d = directory()
        kinds = _consent_kinds(body)
        if body.get("user") is not None:
            user = d.user(str(body["user"]))
            if user is None:
                raise AdminError(404, "unknown user")
            return {"ok": True, "revoked": d.user_consents.pop((client_id, res.app_id, user.oid), None) is not None}
        revoked = False
        if "application" in kinds:
            revoked |= d.app_consents.pop((client_id, res.app_id), None) is not None
        if "delegated" in kinds:
            revoked |= d.delegated_consents.pop((client_id, res.app_id), None) is not None
            for key in [k for k in d.user_consents if k[:2] == (client_id, res.app_id)]:
                revoked = True
                del d.user_consents[key]
        return {"ok": True, "revoked": revoked}

    async def grant_consent(request: web.Request) -> Any:
        """Grant delegated ``scopes`` (for all users, or ``user`` only) or application ``roles``."""
        body, client_id, res = await _consent_request(request)
        d = directory()
        scopes, roles = list(body.get("scopes") or []), list(body.get("roles") or [])
        if not scopes and not roles:
            raise AdminError(400, "give delegated 'scopes' or application 'roles'")
        if roles:
            if body.get("user") is not None:
                raise AdminError(400, "application roles are granted to the client, not per user")
            d.app_consents.setdefault((client_id, res.app_id), set()).update(str(r) for r in roles)
        if scopes:
            user = None if body.get("user") is None else str(body["user"])
            if user is not None and d.user(user) is None:
                raise AdminError(404, "unknown user")
            grant_delegated(d, client_id, res.identifier_uri, [str(s) for s in scopes], user)
        return {"ok": True}

    async def remove_credential(request: web.Request) -> Any:
        bp = _blueprint(request)
        kind = request.match_info["kind"]
        if kind not in CredentialKinds:
            raise AdminError(400, f"kind must be one of {CredentialKinds}")
        if kind == "secret":
            bp.secrets.clear()
        elif kind == "certificate":
            bp.certificates.clear()
        else:
            bp.fics = [f for f in bp.fics if f.kind != kind]
        return {"ok": True}

    async def user_token(request: web.Request) -> Any:
        body = await _body(request)
        user = directory().user(str(body.get("user", demo.DEMO_USER_UPN)))
        if user is None:
            raise AdminError(404, "unknown user")
        tenant = str(body.get("tenant", demo.TENANT_ID)).lower()
        minted = state.minter.subject_user_token(
            tenant, user, str(body.get("audience", demo.BLUEPRINT_APP_ID)),
            str(body.get("scp", demo.BLUEPRINT_SCOPE)), int(body.get("lifetime", 3600)),
        )
        return {"access_token": minted.token, "expires_in": minted.expires_in}

    async def workload_token(request: web.Request) -> Any:
        body = await _body(request)
        lifetime = int(body.get("lifetime", 3600))
        now = int(time.time())
        iat = now if lifetime > 0 else now - 7200
        claims = {
            "iss": demo.KUBERNETES_ISSUER,
            "sub": str(body.get("subject", demo.WORKLOAD_SUBJECT)),
            "aud": [str(body.get("audience", demo.TOKEN_EXCHANGE_RESOURCE))],
            "iat": iat, "nbf": iat, "exp": now + lifetime if lifetime > 0 else now - 60,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "agent-sa", "uid": str(uuid.uuid4())}},
        }
        token = jwt.encode(claims, state.k8s_key, algorithm="RS256", headers={"kid": state.k8s_kid})
        return {"token": token, "expires_in": lifetime}

    async def rotate(request: web.Request) -> Any:
        return {"active_kid": state.rotate_keys()}

    async def settings(request: web.Request) -> Any:
        state.settings.update(await _body(request))
        return state.settings.as_dict()

    async def summary(request: web.Request) -> Any:
        return state.summary()

    r = app.router
    r.add_post("/_emulator/reset", _wrap(reset))
    r.add_get("/_emulator/log", _wrap(log))
    r.add_post("/_emulator/faults", _wrap(add_fault))
    r.add_get("/_emulator/faults", _wrap(list_faults))
    r.add_delete("/_emulator/faults", _wrap(clear_faults))
    r.add_post("/_emulator/agents/{id}/{action:disable|enable}", _wrap(agent_switch))
    r.add_post("/_emulator/blueprints/{id}/{action:disable|enable}", _wrap(blueprint_switch))
    r.add_post("/_emulator/blueprints/{id}/install", _wrap(blueprint_install))
    r.add_post("/_emulator/consents/revoke", _wrap(revoke_consent))
    r.add_post("/_emulator/consents/grant", _wrap(grant_consent))
    r.add_delete("/_emulator/blueprints/{id}/credentials/{kind}", _wrap(remove_credential))
    r.add_post("/_emulator/users/token", _wrap(user_token))
    r.add_post("/_emulator/workload-token", _wrap(workload_token))
    r.add_post("/_emulator/keys/rotate", _wrap(rotate))
    r.add_post("/_emulator/settings", _wrap(settings))
    r.add_get("/_emulator/state", _wrap(summary))
