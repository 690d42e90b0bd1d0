"""Every documented wrong request is rejected with the right AADSTS code (raw forms)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.emulator.emu_helpers import (
    ASSERTION_TYPE,
    EXCHANGE,
    GRAPH_DEFAULT,
    GRAPH_USER_READ,
    assert_error,
    claims_of,
    post_token,
    t1,
    t2,
    token_url,
)


def _t1_form(agent: str = demo.AGENT_1_ID, **extra: str) -> dict[str, str]:
    form = {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID, "scope": EXCHANGE,
            "fmi_path": agent, "client_secret": demo.BLUEPRINT_SECRET}
    form.update(extra)
    return form


def _agent_form(assertion: str, agent: str = demo.AGENT_1_ID, scope: str = GRAPH_DEFAULT) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": agent, "scope": scope,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}


def _cert_assertion(admin: EmulatorAdmin, emulator: EmulatorServer, *, key: Any = None, **overrides: Any) -> str:
    paths = admin.state()["paths"]
    cert = x509.load_pem_x509_certificate(Path(paths["blueprint_cert_only_pem"]).read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    if key is None:
        key = serialization.load_pem_private_key(Path(paths["blueprint_key_pem"]).read_bytes(), None)
    now = int(time.time())
    claims = {"aud": token_url(emulator), "iss": demo.BLUEPRINT_APP_ID, "sub": demo.BLUEPRINT_APP_ID,
              "iat": now, "exp": now + 600, "jti": str(uuid.uuid4())}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    x5t = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    return jwt.encode(claims, key, algorithm="PS256", headers={"x5t#S256": x5t})


def _cert_form(assertion: str) -> dict[str, str]:
    form = _t1_form()
    del form["client_secret"]
    form.update(client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)
    return form


def test_certificate_assertion_accepted_when_well_formed(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    resp = post_token(emulator, _cert_form(_cert_assertion(admin, emulator)))
    assert resp.status_code == 200, resp.text


def test_credential_count_rules(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    none = _t1_form()
    del none["client_secret"]
    assert_error(post_token(emulator, none), 401, 7000216, "invalid_client")
    both = _t1_form(client_assertion=_cert_assertion(admin, emulator), client_assertion_type=ASSERTION_TYPE)
    assert_error(post_token(emulator, both), 400, 9002324)
    assert_error(post_token(emulator, _t1_form(client_secret="wrong")), 401, 7000215, "invalid_client")


def test_bad_certificate_assertions(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = [
        ({"key": other_key}, 700027),  # registered thumbprint, wrong signing key
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000}, 700024),  # expired
        ({"aud": "https://login.microsoftonline.com/x/oauth2/v2.0/token"}, 50012),
        ({"iss": demo.AGENT_1_ID}, 700021),
        ({"jti": None}, 50027),
    ]
    for overrides, code in cases:
        assertion = _cert_assertion(admin, emulator, **overrides)
        assert_error(post_token(emulator, _cert_form(assertion)), 401, code, "invalid_client")


def test_unregistered_certificate(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.remove_credential(demo.BLUEPRINT_APP_ID, "certificate")
    assert_error(post_token(emulator, _cert_form(_cert_assertion(admin, emulator))), 401, 700027)


def test_fmi_path_and_scope_rules(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    assert_error(post_token(emulator, _t1_form(agent=str(uuid.uuid4()))), 400, 9002313)
    assert_error(post_token(emulator, _t1_form(scope=GRAPH_DEFAULT)), 400, 70011, "invalid_scope")
    no_fmi = _t1_form()
    del no_fmi["fmi_path"]
    assert_error(post_token(emulator, no_fmi), 400, 70011)


def test_t1_of_another_agent_and_wrong_assertions(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    other = t1(emulator, demo.AGENT_2_ID)
    assert_error(post_token(emulator, _agent_form(other, demo.AGENT_1_ID)), 401, 700213, "invalid_client")
    # T2 is no client assertion
    assert_error(post_token(emulator, _agent_form(t2(emulator))), 401, 700213)
    # tampered T1: same header/signature, other payload
    good = t1(emulator)
    head, _, sig = good.split(".")
    payload = claims_of(good)
    payload["exp"] += 100
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    assert_error(post_token(emulator, _agent_form(f"{head}.{body}.{sig}")), 401, 700027)
    # agents have no secrets
    form = {"grant_type": "client_credentials", "client_id": demo.AGENT_1_ID, "scope": GRAPH_DEFAULT,
            "client_secret": demo.BLUEPRINT_SECRET}
    assert_error(post_token(emulator, form), 401, 7000215)


def test_unknown_client_unknown_tenant_other_tenant(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    assert_error(post_token(emulator, _t1_form(client_id=str(uuid.uuid4()))), 400, 700016, "unauthorized_client")
    assert_error(post_token(emulator, _t1_form(), tenant=str(uuid.uuid4())), 400, 90002)
    # blueprint does not exist in the second tenant
    assert_error(post_token(emulator, _t1_form(), tenant=demo.OTHER_TENANT_ID), 400, 700016)
    # agent identity asking outside its home tenant
    home_t1 = t1(emulator)
    assert_error(post_token(emulator, _agent_form(home_t1), tenant=demo.OTHER_TENANT_ID), 401, 700211)


def test_disabled_agent_and_blueprint(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    assertion = t1(emulator)
    admin.disable_agent(demo.AGENT_1_ID)
    assert_error(post_token(emulator, _t1_form()), 400, 7000112, "unauthorized_client")
    assert_error(post_token(emulator, _agent_form(assertion)), 400, 7000112)
    admin.enable_agent(demo.AGENT_1_ID)
    assert post_token(emulator, _agent_form(assertion)).status_code == 200
    admin.disable_blueprint(demo.BLUEPRINT_APP_ID)
    assert_error(post_token(emulator, _t1_form(agent=demo.AGENT_2_ID)), 400, 7000112)
    assert_error(post_token(emulator, _agent_form(assertion)), 400, 7000112)
    admin.enable_blueprint(demo.BLUEPRINT_APP_ID)
    assert post_token(emulator, _agent_form(assertion)).status_code == 200


def test_consent_and_scope_errors(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    assertion = t1(emulator)
    assert_error(post_token(emulator, _agent_form(assertion, scope=GRAPH_USER_READ)), 400, 70011)
    assert_error(post_token(emulator, _agent_form(assertion, scope="api://nope/.default")), 400, 500011)
    admin.revoke_consent(demo.AGENT_1_ID, demo.GRAPH_RESOURCE)
    assert_error(post_token(emulator, _agent_form(assertion)), 400, 65001, "invalid_grant")
    # the other agent keeps its consent
    assert post_token(emulator, _agent_form(t1(emulator, demo.AGENT_2_ID), demo.AGENT_2_ID)).status_code == 200


def _obo_form(assertion: str, user_token: str, scope: str = GRAPH_USER_READ) -> dict[str, str]:
    return {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "client_id": demo.AGENT_1_ID,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion, "assertion": user_token,
            "requested_token_use": "on_behalf_of", "scope": f"{scope} openid profile offline_access",
            "client_info": "1"}


def test_obo_errors(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    assertion = t1(emulator)
    tc = admin.user_token(demo.DEMO_USER_UPN)
    assert post_token(emulator, _obo_form(assertion, tc)).status_code == 200
    expired = admin.user_token(demo.DEMO_USER_UPN, lifetime=-600)
    assert_error(post_token(emulator, _obo_form(assertion, expired)), 400, 500133, "invalid_grant")
    wrong_aud = admin.user_token(demo.DEMO_USER_UPN, audience=demo.AGENT_1_ID)
    assert_error(post_token(emulator, _obo_form(assertion, wrong_aud)), 400, 500131)
    assert_error(post_token(emulator, _obo_form(assertion, tc, f"{demo.GRAPH_RESOURCE}/Mail.Read")), 400, 65001)
    app_token_as_user = t2(emulator)
    assert_error(post_token(emulator, _obo_form(assertion, app_token_as_user)), 400, 50013)
    form = _obo_form(assertion, tc)
    del form["requested_token_use"]
    assert_error(post_token(emulator, form), 400, 900144)


def _user_fic_form(assertion: str, exchange: str, **user: str) -> dict[str, str]:
    form = {"grant_type": "user_fic", "client_id": demo.AGENT_1_ID, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion, "user_federated_identity_credential": exchange,
            "scope": f"{GRAPH_USER_READ} offline_access openid profile"}
    form.update(user)
    return form


def test_user_fic_errors_and_requested_token_use(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    assertion, exchange = t1(emulator), t2(emulator)
    accepted = _user_fic_form(assertion, exchange, username=demo.AGENT_USER_UPN, requested_token_use="on_behalf_of")
    assert post_token(emulator, accepted).status_code == 200
    assert_error(post_token(emulator, _user_fic_form(assertion, exchange, user_id=demo.AGENT_USER_UPN)),
                 400, 50000, "server_error")
    assert_error(post_token(emulator, _user_fic_form(assertion, exchange, username="ghost@demo.example")), 400, 50034)
    assert_error(post_token(emulator, _user_fic_form(assertion, exchange, username=demo.DEMO_USER_UPN)), 400, 9002313)
    # T1 where T2 belongs; T2 of another agent
    assert_error(post_token(emulator, _user_fic_form(assertion, assertion, username=demo.AGENT_USER_UPN)), 400, 50013)
    other_t2 = t2(emulator, demo.AGENT_2_ID)
    assert_error(post_token(emulator, _user_fic_form(assertion, other_t2, username=demo.AGENT_USER_UPN)), 400, 50013)


def test_refresh_token_errors(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    assertion = t1(emulator)
    first = post_token(emulator, _obo_form(assertion, admin.user_token(demo.DEMO_USER_UPN))).json()
    form = {"grant_type": "refresh_token", "client_id": demo.AGENT_1_ID, "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion, "refresh_token": first["refresh_token"], "scope": GRAPH_USER_READ}
    assert post_token(emulator, form).status_code == 200
    other = dict(form, client_id=demo.AGENT_2_ID, client_assertion=t1(emulator, demo.AGENT_2_ID))
    assert_error(post_token(emulator, other), 400, 9002313, "invalid_grant")
    assert_error(post_token(emulator, dict(form, refresh_token="garbage")), 400, 9002313)


def test_grant_type_errors_and_correlation(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    rfc8693 = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "client_id": demo.AGENT_1_ID,
               "subject_token": "x", "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"}
    assert_error(post_token(emulator, rfc8693), 400, 82001)
    password = {"grant_type": "password", "client_id": demo.BLUEPRINT_APP_ID}
    assert_error(post_token(emulator, password), 400, 70003, "unsupported_grant_type")
    cid = str(uuid.uuid4())
    body = assert_error(post_token(emulator, {"client_id": demo.BLUEPRINT_APP_ID}, headers={"client-request-id": cid}),
                        400, 900144)
    assert body["correlation_id"] == cid


def test_federated_credential_errors(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    def fic_form(assertion: str) -> dict[str, str]:
        form = _t1_form()
        del form["client_secret"]
        return dict(form, client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)

    wrong_subject = admin.workload_token(subject="system:serviceaccount:other:intruder")
    assert_error(post_token(emulator, fic_form(wrong_subject)), 401, 700213)
    expired = admin.workload_token(lifetime=0)
    assert_error(post_token(emulator, fic_form(expired)), 401, 700024)
    assert post_token(emulator, fic_form(admin.workload_token())).status_code == 200
    admin.remove_credential(demo.BLUEPRINT_APP_ID, "workload")
    assert_error(post_token(emulator, fic_form(admin.workload_token())), 401, 700211)
    admin.remove_credential(demo.BLUEPRINT_APP_ID, "secret")
    assert_error(post_token(emulator, _t1_form()), 401, 7000215)
    # reset restores every credential
    admin.reset()
    assert post_token(emulator, _t1_form()).status_code == 200


def test_mi_endpoint_errors(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    params = {"api-version": "2018-02-01", "resource": "api://AzureADTokenExchange"}
    imds = f"{emulator.mi_url}/metadata/identity/oauth2/token"
    assert requests.get(imds, params=params, timeout=10).status_code == 400  # no Metadata header
    resp = requests.get(imds, params=dict(params, client_id=str(uuid.uuid4())), headers={"Metadata": "true"},
                        timeout=10)
    assert resp.status_code == 400
    app_service = f"{emulator.mi_url}/msi/token"
    params["api-version"] = "2019-08-01"
    assert requests.get(app_service, params=params, headers={"X-IDENTITY-HEADER": "nope"}, timeout=10).status_code == 401
    good = requests.get(app_service, params=params, headers={"X-IDENTITY-HEADER": emulator.mi_secret}, timeout=10)
    body = good.json()
    assert good.status_code == 200 and int(body["expires_on"]) > time.time()
    assert body["client_id"] == demo.MI_CLIENT_ID


def test_delegated_consent_per_user(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    """An admin's consent covers every user; without it, only the users who consented themselves."""
    assertion = t1(emulator)
    alice, bob = admin.user_token(demo.DEMO_USER_UPN), admin.user_token(demo.DEMO_USER_2_UPN)
    assert post_token(emulator, _obo_form(assertion, bob)).status_code == 200
    admin.revoke_consent(demo.AGENT_1_ID, demo.GRAPH_RESOURCE, kind="delegated")
    admin.grant_consent(demo.AGENT_1_ID, demo.GRAPH_RESOURCE, scopes=["User.Read"], user=demo.DEMO_USER_UPN)
    assert post_token(emulator, _obo_form(assertion, alice)).status_code == 200
    body = assert_error(post_token(emulator, _obo_form(assertion, bob)), 400, 65001, "invalid_grant")
    assert demo.AGENT_1_ID in body["error_description"]
    # the application consent was left alone (kind="delegated")
    assert post_token(emulator, _agent_form(assertion)).status_code == 200
    admin.revoke_consent(demo.AGENT_1_ID, demo.GRAPH_RESOURCE, user=demo.DEMO_USER_OID)
    assert_error(post_token(emulator, _obo_form(assertion, alice)), 400, 65001)
    admin.grant_consent(demo.AGENT_1_ID, demo.GRAPH_RESOURCE, scopes=["User.Read"])
    assert post_token(emulator, _obo_form(assertion, bob)).status_code == 200


def test_error_description_lines_are_entras(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    """Entra puts the trace id, correlation id and timestamp on their own lines (\\r\\n)."""
    body = assert_error(post_token(emulator, _t1_form(), tenant=demo.OTHER_TENANT_ID), 400, 700016)
    first, *rest = body["error_description"].split("\r\n")
    assert demo.BLUEPRINT_APP_ID in first and "Trace ID" not in first
    assert [line.split(":")[0] for line in rest] == ["Trace ID", "Correlation ID", "Timestamp"]


def test_blueprint_installed_and_disabled_per_tenant(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    """A multi-tenant blueprint works where it is installed; disabling its service principal in
    one tenant refuses it there only."""
    form = {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID, "scope": GRAPH_DEFAULT,
            "client_secret": demo.BLUEPRINT_SECRET}
    assert_error(post_token(emulator, form, tenant=demo.OTHER_TENANT_ID), 400, 700016, "unauthorized_client")
    admin.install_blueprint(demo.BLUEPRINT_APP_ID, demo.OTHER_TENANT_ID)
    other = post_token(emulator, form, tenant=demo.OTHER_TENANT_ID)
    assert other.status_code == 200 and claims_of(other.json()["access_token"])["tid"] == demo.OTHER_TENANT_ID
    # an agent of the blueprint is still refused outside its home tenant
    assert_error(post_token(emulator, _t1_form(), tenant=demo.OTHER_TENANT_ID), 401, 700211)
    admin.disable_blueprint(demo.BLUEPRINT_APP_ID, tenant=demo.OTHER_TENANT_ID)
    body = assert_error(post_token(emulator, form, tenant=demo.OTHER_TENANT_ID), 400, 7000112)
    assert demo.BLUEPRINT_APP_ID in body["error_description"]
    assert post_token(emulator, form).status_code == 200  # home tenant unaffected
    admin.enable_blueprint(demo.BLUEPRINT_APP_ID, tenant=demo.OTHER_TENANT_ID)
    assert post_token(emulator, form, tenant=demo.OTHER_TENANT_ID).status_code == 200
