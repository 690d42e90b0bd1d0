"""MSAL Python itself completes every agent leg against the emulator."""

from __future__ import annotations

from pathlib import Path

import jwt
import msal
import pytest
import requests

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from entra_emulator.tokens import fmi_subject
from tests.emulator.emu_helpers import (
    EXCHANGE,
    GRAPH_DEFAULT,
    GRAPH_USER_READ,
    agent_app,
    cca,
    claims_of,
    ok,
    t1,
    t2,
    validate,
)


def _assert_t1(emulator: EmulatorServer, token: str, agent: str, azpacr: str) -> None:
    c = validate(emulator, token, demo.TOKEN_EXCHANGE_APP_ID)
    assert c["azp"] == demo.BLUEPRINT_APP_ID
    assert c["sub"] == fmi_subject(demo.TENANT_ID, demo.BLUEPRINT_APP_ID, agent)
    assert c["idtyp"] == "app" and c["azpacr"] == azpacr and c["tid"] == demo.TENANT_ID
    assert c["exp"] - c["iat"] == 3900


def test_t1_with_client_secret(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    token = t1(emulator, demo.AGENT_2_ID)
    _assert_t1(emulator, token, demo.AGENT_2_ID, "1")
    assert admin.counts()["t1"] == 1


def test_t1_sub_matches_documented_sample_encoding() -> None:
    # GUIDs are base64url of their little-endian bytes.
    sub = fmi_subject("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002", "x")
    assert sub == "/eid1/c/pub/t/AAAAAAAAAAAAAAAAAAAAAQ/a/AAAAAAAAAAAAAAAAAAAAAg/x"


def test_t1_with_certificate_pem_thumbprint_rs256(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    state = admin.state()
    key = Path(state["paths"]["blueprint_key_pem"]).read_text()
    cred = {"private_key": key, "thumbprint": state["blueprint_cert_thumbprint_sha1"]}
    token = ok(cca(emulator, demo.BLUEPRINT_APP_ID, cred).acquire_token_for_client([EXCHANGE], fmi_path=demo.AGENT_1_ID))
    _assert_t1(emulator, token, demo.AGENT_1_ID, "2")


def test_t1_with_certificate_pfx_ps256(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    pfx = admin.state()["paths"]["blueprint_pfx"]
    cred = {"private_key_pfx_path": pfx, "passphrase": demo.PFX_PASSWORD}
    token = ok(cca(emulator, demo.BLUEPRINT_APP_ID, cred).acquire_token_for_client([EXCHANGE], fmi_path=demo.AGENT_1_ID))
    _assert_t1(emulator, token, demo.AGENT_1_ID, "2")


def test_t1_with_certificate_public_certificate_x5c(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    paths = admin.state()["paths"]
    cred = {
        "private_key": Path(paths["blueprint_key_pem"]).read_text(),
        "public_certificate": Path(paths["blueprint_cert_only_pem"]).read_text(),
    }
    token = ok(cca(emulator, demo.BLUEPRINT_APP_ID, cred).acquire_token_for_client([EXCHANGE], fmi_path=demo.AGENT_1_ID))
    _assert_t1(emulator, token, demo.AGENT_1_ID, "2")


def _mi_t1(emulator: EmulatorServer) -> str:
    mi = msal.ManagedIdentityClient(
        msal.UserAssignedManagedIdentity(client_id=demo.MI_CLIENT_ID), http_client=requests.Session()
    )

    def assertion() -> str:
        result = mi.acquire_token_for_client(resource="api://AzureADTokenExchange")
        return ok(result)

    app = cca(emulator, demo.BLUEPRINT_APP_ID, {"client_assertion": assertion})
    return ok(app.acquire_token_for_client([EXCHANGE], fmi_path=demo.AGENT_1_ID))


def test_t1_with_managed_identity_app_service(
    emulator: EmulatorServer, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{emulator.mi_url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", emulator.mi_secret)
    monkeypatch.delenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", raising=False)
    token = _mi_t1(emulator)
    _assert_t1(emulator, token, demo.AGENT_1_ID, "2")
    mi_calls = [r for r in admin.log()["requests"] if r["endpoint"] == "mi"]
    assert [r["status"] for r in mi_calls] == [200]
    assert mi_calls[0]["client_id"] == demo.MI_CLIENT_ID


def test_t1_with_managed_identity_imds(
    emulator: EmulatorServer, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", emulator.mi_url)
    token = _mi_t1(emulator)
    _assert_t1(emulator, token, demo.AGENT_1_ID, "2")
    assert admin.counts()["mi"] == 1


def test_mi_token_claims(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    resp = requests.get(
        f"{emulator.mi_url}/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": "api://AzureADTokenExchange", "client_id": demo.MI_CLIENT_ID},
        headers={"Metadata": "true"}, timeout=10,
    )
    body = resp.json()
    assert resp.status_code == 200
    assert {"access_token", "expires_in", "expires_on", "resource", "token_type"} <= set(body)
    c = validate(emulator, body["access_token"], demo.TOKEN_EXCHANGE_APP_ID)
    assert c["sub"] == c["oid"] == demo.MI_PRINCIPAL_ID


def test_t1_with_workload_identity_token(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    workload = admin.workload_token()
    assert claims_of(workload)["sub"] == demo.WORKLOAD_SUBJECT
    app = cca(emulator, demo.BLUEPRINT_APP_ID, {"client_assertion": lambda: workload})
    token = ok(app.acquire_token_for_client([EXCHANGE], fmi_path=demo.AGENT_2_ID))
    _assert_t1(emulator, token, demo.AGENT_2_ID, "2")


def test_agent_app_token(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    result = agent_app(emulator).acquire_token_for_client([GRAPH_DEFAULT])
    c = validate(emulator, ok(result), demo.GRAPH_RESOURCE)
    assert 3600 <= result["expires_in"] <= 5400
    assert c["idtyp"] == "app" and c["oid"] == c["sub"] == c["azp"] == demo.AGENT_1_ID
    assert c["roles"] == ["User.Read.All"]
    assert c["xms_par_app_azp"] == demo.BLUEPRINT_APP_ID
    assert "11" in c["xms_act_fct"].split() and "11" in c["xms_sub_fct"].split()
    assert c["xms_idrel"] == "7"
    counts = admin.counts()
    assert (counts["t1"], counts["app"]) == (1, 1)


def test_agent_app_token_for_demo_api(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    token = ok(agent_app(emulator, demo.AGENT_2_ID).acquire_token_for_client([f"{demo.DEMO_API_RESOURCE}/.default"]))
    c = validate(emulator, token, demo.DEMO_API_APP_ID)
    assert c["roles"] == ["Data.Read"] and c["azp"] == demo.AGENT_2_ID


def test_t2(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    c = validate(emulator, t2(emulator), demo.TOKEN_EXCHANGE_APP_ID)
    assert c["azp"] == c["oid"] == c["sub"] == demo.AGENT_1_ID
    assert c["xms_par_app_azp"] == demo.BLUEPRINT_APP_ID and "11" in c["xms_act_fct"].split()
    assert admin.counts()["t2"] == 1


def test_agent_obo(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    tc = admin.user_token(demo.DEMO_USER_UPN)
    assert claims_of(tc)["aud"] == demo.BLUEPRINT_APP_ID
    result = agent_app(emulator).acquire_token_on_behalf_of(tc, [GRAPH_USER_READ])
    c = validate(emulator, ok(result), demo.GRAPH_RESOURCE)
    assert c["idtyp"] == "user" and c["oid"] == demo.DEMO_USER_OID
    assert c["azp"] == demo.AGENT_1_ID and c["scp"] == "User.Read" and c["xms_act_fct"] == "11"
    assert c["xms_idrel"] == "1" and c["xms_par_app_azp"] == demo.BLUEPRINT_APP_ID
    assert result["refresh_token"] and result["id_token_claims"]["oid"] == demo.DEMO_USER_OID
    assert admin.counts()["obo"] == 1


def test_user_fic_by_upn_and_by_oid(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    app = agent_app(emulator)
    exchange = t2(emulator)
    by_upn = app.acquire_token_by_user_federated_identity_credential(
        [GRAPH_USER_READ], exchange, username=demo.AGENT_USER_UPN
    )
    by_oid = app.acquire_token_by_user_federated_identity_credential(
        [GRAPH_USER_READ], exchange, user_object_id=demo.AGENT_USER_OID
    )
    for result in (by_upn, by_oid):
        c = validate(emulator, ok(result), demo.GRAPH_RESOURCE)
        assert c["idtyp"] == "user" and c["oid"] == demo.AGENT_USER_OID and c["azp"] == demo.AGENT_1_ID
        assert "13" in c["xms_sub_fct"].split() and "11" in c["xms_act_fct"].split()
        assert {"refresh_token", "id_token", "client_info", "scope"} <= set(result)
    assert admin.counts()["user_fic"] == 2


def test_refresh_token(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    app = agent_app(emulator)
    first = app.acquire_token_by_user_federated_identity_credential(
        [GRAPH_USER_READ], t2(emulator), username=demo.AGENT_USER_UPN
    )
    ok(first)
    refreshed = app.acquire_token_by_refresh_token(first["refresh_token"], [GRAPH_USER_READ])
    c = validate(emulator, ok(refreshed), demo.GRAPH_RESOURCE)
    assert c["oid"] == demo.AGENT_USER_OID and c["xms_sub_fct"] == "1 13"
    assert refreshed["access_token"] != first["access_token"]
    assert admin.counts()["refresh"] == 1


def test_blueprint_app_token_and_blueprint_obo(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    app = cca(emulator, demo.BLUEPRINT_APP_ID, demo.BLUEPRINT_SECRET)
    c = validate(emulator, ok(app.acquire_token_for_client([GRAPH_DEFAULT])), demo.GRAPH_RESOURCE)
    assert c["azp"] == demo.BLUEPRINT_APP_ID and "xms_par_app_azp" not in c
    tc = admin.user_token(demo.DEMO_USER_OID)
    obo = app.acquire_token_on_behalf_of(tc, [f"{demo.DEMO_API_RESOURCE}/access_as_user"])
    c = validate(emulator, ok(obo), demo.DEMO_API_APP_ID)
    assert c["azp"] == demo.BLUEPRINT_APP_ID and c["scp"] == "access_as_user" and c["oid"] == demo.DEMO_USER_OID
    assert admin.counts()["blueprint_app"] == 1 and admin.counts()["blueprint_obo"] == 1


def test_settings_short_lifetimes_and_refresh_in(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.settings(access_token_lifetime=[400, 420], refresh_in=200, exchange_token_lifetime=600)
    token = t1(emulator)
    c = claims_of(token)
    assert c["exp"] - c["iat"] == 600
    result = agent_app(emulator).acquire_token_for_client([GRAPH_DEFAULT])
    assert 400 - 5 <= result["expires_in"] <= 420
    assert result.get("refresh_on")  # MSAL turns refresh_in into refresh_on
    admin.reset()
    default = claims_of(t1(emulator))  # one token: exp and iat of two tokens differ across a second boundary
    assert default["exp"] - default["iat"] == 3900


def test_tokens_do_not_validate_for_another_audience(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    with pytest.raises(jwt.InvalidAudienceError):
        validate(emulator, t1(emulator), demo.GRAPH_RESOURCE)
