"""OIDC discovery, JWKS, key rotation, admin state."""

from __future__ import annotations

import jwt
import pytest
import requests

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.emulator.emu_helpers import GRAPH_DEFAULT, agent_app, jwks, ok, t1, validate


def test_discovery_document(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    url = f"{emulator.url}/{demo.TENANT_ID}/v2.0/.well-known/openid-configuration"
    doc = requests.get(url, verify=str(emulator.ca_path), timeout=10).json()
    base = f"{emulator.url}/{demo.TENANT_ID}"
    assert doc["issuer"] == f"{base}/v2.0"
    assert doc["token_endpoint"] == f"{base}/oauth2/v2.0/token"
    assert doc["authorization_endpoint"] == f"{base}/oauth2/v2.0/authorize"
    assert doc["jwks_uri"] == f"{base}/discovery/v2.0/keys"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert admin.counts()["other"] == 1


@pytest.mark.parametrize(
    ("tenant", "text"),
    [
        ("11111111-2222-3333-4444-555555555555", "Tenant '11111111-2222-3333-4444-555555555555' not found. "),
        ("No-Such-Tenant.onmicrosoft.com", "Tenant 'No-Such-Tenant.onmicrosoft.com' not found. "),
        ("00000000-0000-0000-0000-000000000000", "Requested tenant identifier '00000000-0000-0000-0000-000000000000'"
         " is not valid. Tenant identifiers may not be an empty GUID."),
    ],
)  # fmt: skip
def test_an_unknown_tenant_is_refused_as_entra_does(
    emulator: EmulatorServer, admin: EmulatorAdmin, tenant: str, text: str
) -> None:
    """Entra answers a tenant GUID or domain it does not know with HTTP 400 and AADSTS90002:
    ``invalid_tenant`` from discovery, ``invalid_request`` from the token endpoint; the
    identifier is echoed as spelt."""
    url = f"{emulator.url}/{tenant}/v2.0/.well-known/openid-configuration"
    discovery = requests.get(url, verify=str(emulator.ca_path), timeout=10)
    form = {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID, "scope": GRAPH_DEFAULT,
            "client_secret": demo.BLUEPRINT_SECRET}  # fmt: skip
    token = requests.post(f"{emulator.url}/{tenant}/oauth2/v2.0/token", data=form, verify=str(emulator.ca_path),
                          timeout=10)  # fmt: skip
    for resp, error in ((discovery, "invalid_tenant"), (token, "invalid_request")):
        assert resp.status_code == 400
        body = resp.json()
        assert (body["error"], body["error_codes"]) == (error, [90002])
        assert body["error_description"].startswith(f"AADSTS90002: {text}"), body["error_description"]


def test_jwks_has_two_rsa_keys_and_tokens_use_the_active_one(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    keys = jwks(emulator)
    assert len(keys.keys) == 2 and all(k.key_type == "RSA" for k in keys.keys)
    active = admin.state()["active_kid"]
    assert jwt.get_unverified_header(t1(emulator))["kid"] == active


def test_key_rotation(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    before = ok(agent_app(emulator).acquire_token_for_client([GRAPH_DEFAULT]))
    old_kid = jwt.get_unverified_header(before)["kid"]
    new_kid = admin.rotate_keys()
    assert new_kid != old_kid
    kids = {k.key_id for k in jwks(emulator).keys}
    assert kids == {old_kid, new_kid}
    validate(emulator, before, demo.GRAPH_RESOURCE)  # old key still published
    after = ok(agent_app(emulator).acquire_token_for_client([GRAPH_DEFAULT]))
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    validate(emulator, after, demo.GRAPH_RESOURCE)
    # T1 minted before the next rotation is still accepted by the emulator itself
    old_t1 = t1(emulator)
    third = admin.rotate_keys()
    assert old_kid not in {k.key_id for k in jwks(emulator).keys}
    with pytest.raises(KeyError):
        validate(emulator, before, demo.GRAPH_RESOURCE)
    assert jwt.get_unverified_header(old_t1)["kid"] == new_kid
    assert {k.key_id for k in jwks(emulator).keys} == {new_kid, third}


def test_state_summary_has_no_secrets_beyond_mi_header(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    state = admin.state()
    assert state["url"] == emulator.url and state["mi_url"] == emulator.mi_url
    assert state["mi_secret"] == emulator.mi_secret
    assert state["paths"]["ca"] == str(emulator.ca_path)
    assert demo.BLUEPRINT_SECRET not in requests.get(
        f"{emulator.url}/_emulator/state", verify=str(emulator.ca_path), timeout=10
    ).text
    assert {a["app_id"] for a in state["agents"]} == {demo.AGENT_1_ID, demo.AGENT_2_ID}


def test_log_never_holds_tokens_or_secrets(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    token = t1(emulator)
    raw = requests.get(f"{emulator.url}/_emulator/log", verify=str(emulator.ca_path), timeout=10).text
    assert demo.BLUEPRINT_SECRET not in raw and token not in raw
    log = admin.log()
    last = log["requests"][-1]
    assert (last["leg"], last["status"], last["fmi_path"]) == ("t1", 200, demo.AGENT_1_ID)
    assert admin.log(since=last["seq"])["requests"] == []


def test_admin_rejects_bad_input(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    with pytest.raises(RuntimeError, match="HTTP 400"):
        admin.fault(target="token", mode="explode")
    with pytest.raises(RuntimeError, match="HTTP 404"):
        admin.disable_agent("00000000-0000-0000-0000-000000000000")
    with pytest.raises(RuntimeError, match="HTTP 400"):
        admin.settings(access_token_lifetime=[10, 5])
