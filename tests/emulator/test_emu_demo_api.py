"""The emulator's demo downstream APIs (issue 19.3): they validate the token as a resource server does
(signature against the emulator's keys, issuer, audience, lifetime, permission) and answer JSON."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.emulator.emu_helpers import claims_of, post_token

GRAPH = demo.DEMO_GRAPH_PATH
API = demo.DEMO_API_PATH


def _call(emulator: EmulatorServer, path: str, token: str | None, method: str = "GET", **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.request(method, emulator.url + path, headers=headers, verify=str(emulator.ca_path),
                            timeout=10, **kw)


def _app_token(emulator: EmulatorServer, scope: str) -> str:
    form = {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID,
            "client_secret": demo.BLUEPRINT_SECRET, "scope": scope}
    resp = post_token(emulator, form)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def _sign(emulator: EmulatorServer, token: str, **changes: Any) -> str:
    """The same claims with ``changes``, signed with the emulator's real active key."""
    assert emulator.emulator is not None
    claims = {k: v for k, v in {**claims_of(token), **changes}.items() if v is not None}
    return emulator.emulator.state.keys.sign(claims)


def _error(resp: requests.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def test_graph_me_for_a_delegated_token(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    user = admin.user_token(demo.DEMO_USER_UPN, audience=demo.GRAPH_RESOURCE, scp="User.Read")
    resp = _call(emulator, GRAPH + "me", user)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["id"] == demo.DEMO_USER_OID and resp.json()["userPrincipalName"] == demo.DEMO_USER_UPN


def test_graph_users_for_an_app_token_and_me_refused(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    app = _app_token(emulator, f"{demo.GRAPH_RESOURCE}/.default")
    resp = _call(emulator, GRAPH + "users", app)
    assert resp.status_code == 200, resp.text
    assert {u["id"] for u in resp.json()["value"]} == {demo.DEMO_USER_OID, demo.DEMO_USER_2_OID, demo.AGENT_USER_OID}
    one = _call(emulator, GRAPH + f"users/{demo.AGENT_USER_UPN}", app)
    assert one.status_code == 200 and one.json()["id"] == demo.AGENT_USER_OID
    _error(_call(emulator, GRAPH + "users/nobody@demo.example", app), 404, "Request_ResourceNotFound")
    assert "delegated" in _error(_call(emulator, GRAPH + "me", app), 400, "BadRequest")
    _error(_call(emulator, GRAPH + "groups", app), 400, "BadRequest")


def test_demo_api_echoes_the_caller(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    app = _app_token(emulator, f"{demo.DEMO_API_RESOURCE}/.default")
    resp = _call(emulator, API + "orders/7?x=1", app, "POST", json={"n": 1})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["method"], body["path"], body["query"], body["body"]) == ("POST", "/orders/7", {"x": "1"}, {"n": 1})
    assert body["caller"]["oid"] == demo.BLUEPRINT_SP_OID and body["caller"]["roles"] == ["Data.Read"]
    assert app not in resp.text  # the token itself is never echoed


def test_missing_and_malformed_tokens_are_401(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    for token in (None, "", "not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.!!!"):
        resp = _call(emulator, API + "x", token)
        _error(resp, 401, "InvalidAuthenticationToken")
        assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    resp = requests.get(emulator.url + API + "x", headers={"Authorization": "Basic abc"},
                        verify=str(emulator.ca_path), timeout=10)
    _error(resp, 401, "InvalidAuthenticationToken")


def test_signature_issuer_audience_lifetime_are_checked(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    good = _app_token(emulator, f"{demo.DEMO_API_RESOURCE}/.default")
    assert _call(emulator, API, good).status_code == 200
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = jwt.get_unverified_header(good)
    forged = jwt.encode(claims_of(good), attacker, algorithm="RS256", headers={"kid": header["kid"]})
    assert "Signature" in _error(_call(emulator, API, forged), 401, "InvalidAuthenticationToken")
    unknown_kid = jwt.encode(claims_of(good), attacker, algorithm="RS256", headers={"kid": "someone-else"})
    _error(_call(emulator, API, unknown_kid), 401, "InvalidAuthenticationToken")
    tampered = good[: good.rindex(".") + 1] + ("A" if good[-1] != "A" else "B") * 20
    _error(_call(emulator, API, tampered), 401, "InvalidAuthenticationToken")
    cases = {
        "Issuer": _sign(emulator, good, iss="https://login.microsoftonline.com/x/v2.0"),
        "Audience": _sign(emulator, good, aud=demo.GRAPH_RESOURCE),
        "Lifetime": _sign(emulator, good, exp=int(time.time()) - 3600),
    }
    for word, token in cases.items():
        assert word in _error(_call(emulator, API, token), 401, "InvalidAuthenticationToken"), word
    other_tenant = _sign(emulator, good, tid=demo.OTHER_TENANT_ID)  # iss still names the first tenant
    _error(_call(emulator, API, other_tenant), 401, "InvalidAuthenticationToken")
    # An exchange token (T1) is not a token for any API.
    form = {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID,
            "client_secret": demo.BLUEPRINT_SECRET, "scope": demo.TOKEN_EXCHANGE_SCOPE, "fmi_path": demo.AGENT_1_ID}
    t1 = post_token(emulator, form).json()["access_token"]
    _error(_call(emulator, GRAPH + "users", t1), 401, "InvalidAuthenticationToken")


@pytest.mark.parametrize(
    ("path", "changes"),
    [
        (API, {"roles": ["Other.Role"]}),
        (API, {"roles": None}),
        (GRAPH + "users", {"roles": ["Data.Read"]}),
    ],
)
def test_missing_permission_is_403(
    emulator: EmulatorServer, admin: EmulatorAdmin, path: str, changes: dict[str, Any]
) -> None:
    scope = demo.DEMO_API_RESOURCE if path == API else demo.GRAPH_RESOURCE
    token = _sign(emulator, _app_token(emulator, f"{scope}/.default"), **changes)
    _error(_call(emulator, path, token), 403, "Authorization_RequestDenied")


def test_delegated_token_needs_its_scope(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    no_scope = admin.user_token(demo.DEMO_USER_UPN, audience=demo.GRAPH_RESOURCE, scp="Mail.Read")
    _error(_call(emulator, GRAPH + "me", no_scope), 403, "Authorization_RequestDenied")
    _error(_call(emulator, GRAPH + "users", no_scope), 403, "Authorization_RequestDenied")
    demo_user = admin.user_token(demo.DEMO_USER_UPN, audience=demo.DEMO_API_APP_ID, scp="access_as_user")
    resp = _call(emulator, API + "whoami", demo_user)
    assert resp.status_code == 200 and resp.json()["caller"]["scp"] == "access_as_user", resp.text
