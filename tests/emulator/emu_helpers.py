"""Helpers for the emulator's own tests (MSAL and raw HTTP, no broker code)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import msal
import requests

from entra_emulator import demo
from entra_emulator.runner import EmulatorServer

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE = demo.TOKEN_EXCHANGE_SCOPE
GRAPH_DEFAULT = f"{demo.GRAPH_RESOURCE}/.default"
GRAPH_USER_READ = f"{demo.GRAPH_RESOURCE}/User.Read"


def cca(emulator: EmulatorServer, client_id: str, credential: Any) -> msal.ConfidentialClientApplication:
    """A fresh MSAL app per call (MSAL's throttle cache lives in the app)."""
    return msal.ConfidentialClientApplication(
        client_id, client_credential=credential, authority=emulator.authority,
        instance_discovery=False, verify=str(emulator.ca_path),
    )


def ok(result: dict[str, Any]) -> str:
    assert "access_token" in result, {k: v for k, v in result.items() if k != "access_token"}
    return str(result["access_token"])


def t1(emulator: EmulatorServer, agent: str = demo.AGENT_1_ID) -> str:
    app = cca(emulator, demo.BLUEPRINT_APP_ID, demo.BLUEPRINT_SECRET)
    return ok(app.acquire_token_for_client([EXCHANGE], fmi_path=agent))


def agent_app(emulator: EmulatorServer, agent: str = demo.AGENT_1_ID) -> msal.ConfidentialClientApplication:
    return cca(emulator, agent, {"client_assertion": lambda: t1(emulator, agent)})


def t2(emulator: EmulatorServer, agent: str = demo.AGENT_1_ID) -> str:
    return ok(agent_app(emulator, agent).acquire_token_for_client([EXCHANGE]))


def token_url(emulator: EmulatorServer, tenant: str = demo.TENANT_ID) -> str:
    return f"{emulator.url}/{tenant}/oauth2/v2.0/token"


def post_token(
    emulator: EmulatorServer, form: dict[str, str], tenant: str = demo.TENANT_ID,
    headers: dict[str, str] | None = None, timeout: float = 10.0,
) -> requests.Response:
    return requests.post(token_url(emulator, tenant), data=form, headers=headers,
                         verify=str(emulator.ca_path), timeout=timeout)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def jwks(emulator: EmulatorServer, tenant: str = demo.TENANT_ID) -> jwt.PyJWKSet:
    resp = requests.get(f"{emulator.url}/{tenant}/discovery/v2.0/keys", verify=str(emulator.ca_path), timeout=10)
    resp.raise_for_status()
    return jwt.PyJWKSet.from_dict(resp.json())


def validate(emulator: EmulatorServer, token: str, audience: str, tenant: str = demo.TENANT_ID) -> dict[str, Any]:
    """Full pyjwt validation against the published JWKS (signature, iss, aud, exp)."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwks(emulator, tenant)[kid]
    return dict(jwt.decode(token, key.key, algorithms=["RS256"], audience=audience,
                           issuer=f"{emulator.url}/{tenant}/v2.0"))


def assert_error(resp: requests.Response, status: int, code: int, error: str | None = None) -> dict[str, Any]:
    body = dict(resp.json())
    assert resp.status_code == status, (resp.status_code, body)
    assert body["error_codes"] == [code], body
    assert body["error_description"].startswith(f"AADSTS{code}: "), body
    for key in ("timestamp", "trace_id", "correlation_id", "error_uri"):
        assert body[key], key
    if error is not None:
        assert body["error"] == error, body
    return body
