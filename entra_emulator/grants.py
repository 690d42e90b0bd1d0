"""Token endpoint logic as plain functions: form params -> TokenResult.

Sans-IO: no sockets here. See ``handle_token``.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from entra_emulator import demo
from entra_emulator.assertions import (
    bad_assertion,
    unverified,
    verify_certificate_assertion,
    verify_emulator_token,
    verify_fic_assertion,
)
from entra_emulator.errors import (
    EntraError,
    error_body,
    invalid_client,
    invalid_grant,
    invalid_request,
    missing_param,
    tenant_not_found,
)
from entra_emulator.scopes import (
    DelegatedScopes,
    app_roles,
    default_scope_resource,
    delegated_scopes,
    invalid_scope,
    is_exchange_scope,
)
from entra_emulator.state import EmulatorState
from entra_emulator.tenant import Agent, Blueprint, User
from entra_emulator.tokens import Minted, RefreshGrant, client_info, fmi_subject

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
USER_FIC = "user_fic"
REFRESH = "refresh_token"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class TokenResult:
    status: int
    body: dict[str, Any] = field(repr=False)
    leg: str
    client_id: str | None
    fmi_path: str | None
    error_code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Client:
    kind: str  # "blueprint" | "agent"
    blueprint: Blueprint
    agent: Agent | None
    azpacr: str = "1"

    @property
    def client_id(self) -> str:
        return self.agent.app_id if self.agent else self.blueprint.app_id


def classify(state: EmulatorState, form: Mapping[str, str]) -> str:
    """Which leg a request is, for the log and fault matching (works on bad input)."""
    gt = form.get("grant_type")
    cid = (form.get("client_id") or "").lower()
    is_blueprint = cid in state.directory.blueprints
    if gt == CLIENT_CREDENTIALS:
        if form.get("fmi_path") is not None:
            return "t1"
        if is_blueprint:
            return "blueprint_app"
        return "t2" if is_exchange_scope(form.get("scope", "")) else "app"
    if gt == JWT_BEARER:
        return "blueprint_obo" if is_blueprint else "obo"
    return {USER_FIC: "user_fic", REFRESH: "refresh"}.get(gt or "", "other")


def handle_token(
    state: EmulatorState, tenant: str, form: Mapping[str, str], correlation_id: str | None = None
) -> TokenResult:
    """Process one token request. Never raises for protocol errors."""
    leg = classify(state, form)
    client_id, fmi_path = form.get("client_id"), form.get("fmi_path")
    try:
        if tenant.lower() not in state.directory.tenants:
            raise tenant_not_found(tenant, "invalid_request")
        body = _dispatch(state, tenant.lower(), form)
        return TokenResult(200, body, leg, client_id, fmi_path)
    except EntraError as err:
        body = error_body(err, state.base_url, correlation_id)
        return TokenResult(err.status, body, leg, client_id, fmi_path, err.code)


def _dispatch(state: EmulatorState, tenant: str, form: Mapping[str, str]) -> dict[str, Any]:
    gt = form.get("grant_type")
    if not gt:
        raise missing_param("grant_type")
    if gt == TOKEN_EXCHANGE:
        raise invalid_request(
            82001, "RFC 8693 token exchange is not supported; use the agent identity grants."
        )
    if gt not in (CLIENT_CREDENTIALS, JWT_BEARER, USER_FIC, REFRESH):
        raise EntraError(70003, "unsupported_grant_type", f"The app requested an unsupported grant type '{gt}'.")
    client = _find_client(state, tenant, form)
    _authenticate(state, tenant, client, form, gt)
    if gt == CLIENT_CREDENTIALS:
        return _client_credentials(state, tenant, client, form)
    if gt == JWT_BEARER:
        return _obo(state, tenant, client, form)
    if gt == USER_FIC:
        return _user_fic(state, tenant, client, form)
    return _refresh(state, tenant, client, form)


def _disabled(app_id: str) -> EntraError:
    return EntraError(7000112, "unauthorized_client", f"Application '{app_id}' is disabled.")


def _find_client(state: EmulatorState, tenant: str, form: Mapping[str, str]) -> Client:
    cid = form.get("client_id")
    if not cid:
        raise missing_param("client_id")
    directory = state.directory
    key = cid.lower()
    not_found = EntraError(
        700016, "unauthorized_client",
        f"Application with identifier '{cid}' was not found in the directory '{tenant}'.",
    )
    if key in directory.blueprints:
        bp = directory.blueprints[key]
        if not bp.present_in(tenant):
            raise not_found
        if bp.disabled_for(tenant):
            raise _disabled(bp.app_id)
        return Client("blueprint", bp, None)
    agent = directory.agents.get(key)
    if agent is None:
        raise not_found
    if agent.tenant != tenant:
        raise invalid_client(
            700211,
            f"No matching federated identity record found for presented assertion issuer: agent identity "
            f"'{agent.app_id}' must request tokens in its home tenant '{agent.tenant}'.",
        )
    parent = directory.blueprints.get(agent.blueprint)
    if parent is None:
        raise not_found
    if agent.disabled:
        raise _disabled(agent.app_id)
    if parent.disabled:
        raise _disabled(parent.app_id)
    return Client("agent", parent, agent)


def _authenticate(state: EmulatorState, tenant: str, client: Client, form: Mapping[str, str], gt: str) -> None:
    secret, assertion = form.get("client_secret"), form.get("client_assertion")
    if secret and assertion:
        raise invalid_request(
            9002324, "Only one client credential may be presented: client_secret or client_assertion."
        )
    if not secret and not assertion:
        raise invalid_client(
            7000216, f"'client_assertion', 'client_secret' or 'request' is required for the '{gt}' grant type."
        )
    atype = form.get("client_assertion_type")
    if assertion and atype is not None and atype != ASSERTION_TYPE:
        raise invalid_client(50027, f"client_assertion_type '{atype}' is not supported.")
    bp = client.blueprint
    if client.agent is None:
        if secret:
            if not any(hmac.compare_digest(secret.encode(), s.encode()) for s in bp.secrets):
                raise invalid_client(
                    7000215, f"Invalid client secret provided for application '{bp.app_id}'."
                )
            client.azpacr = "1"
            return
        assert assertion is not None
        header, _ = unverified(assertion)
        if "x5t" in header or "x5t#S256" in header or "x5c" in header:
            client.azpacr = verify_certificate_assertion(
                assertion, bp, state.accepted_assertion_audiences(tenant), state.verified
            )
        else:
            client.azpacr = verify_fic_assertion(
                assertion, bp, lambda f: state.fic_issuer(f, bp.tenant), state.federated_key, state.verified
            )
        return
    agent = client.agent
    if secret:
        raise invalid_client(7000215, f"Invalid client secret provided for application '{agent.app_id}'.")
    assert assertion is not None
    claims = verify_emulator_token(
        assertion, state.keys, state.issuer(tenant),
        expired=lambda: invalid_client(700024, "Client assertion is not within its valid time range."),
        invalid=lambda d: invalid_client(700027, f"Client assertion failed signature validation. {d}"),
        memo=state.verified,
    )
    if claims.get("aud") != demo.TOKEN_EXCHANGE_APP_ID:
        raise invalid_client(700212, "No matching federated identity record found for presented assertion audience.")
    if claims.get("azp") != agent.blueprint or claims.get("sub") != fmi_subject(tenant, agent.blueprint, agent.app_id):
        raise invalid_client(
            700213,
            "No matching federated identity record found for presented assertion subject: the assertion "
            f"is not a token of the parent blueprint issued for agent identity '{agent.app_id}'.",
        )
    client.azpacr = "2"


def _app_body(state: EmulatorState, minted: Minted) -> dict[str, Any]:
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": minted.expires_in,
        "ext_expires_in": minted.expires_in,
        "access_token": minted.token,
    }
    if state.settings.refresh_in is not None:
        body["refresh_in"] = state.settings.refresh_in
    return body


def _client_credentials(state: EmulatorState, tenant: str, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
    scope = form.get("scope")
    if not scope:
        raise missing_param("scope")
    fmi = form.get("fmi_path")
    directory = state.directory
    bp = client.blueprint
    if client.agent is None:
        if fmi is not None:
            if not is_exchange_scope(scope):
                raise invalid_scope(f"fmi_path requires the scope '{demo.TOKEN_EXCHANGE_SCOPE}', got '{scope}'.")
            agent = directory.agents.get(fmi.lower())
            if agent is None or agent.blueprint != bp.app_id:
                raise invalid_request(
                    9002313, f"fmi_path '{fmi}' is not an agent identity of blueprint '{bp.app_id}'."
                )
            if agent.disabled:
                raise _disabled(agent.app_id)
            if agent.tenant != tenant:
                raise invalid_client(700211, f"Agent identity '{agent.app_id}' belongs to another tenant.")
            return _app_body(state, state.minter.t1(tenant, bp, agent.app_id, client.azpacr))
        if is_exchange_scope(scope):
            raise invalid_scope("A blueprint needs fmi_path (an agent identity) for the token exchange scope.")
        resource = default_scope_resource(directory, scope, tenant)
        roles = app_roles(directory, bp.app_id, resource)
        return _app_body(state, state.minter.app_token(tenant, bp.app_id, bp.sp_oid, resource, roles, None))
    agent = client.agent
    if fmi is not None:
        raise invalid_request(9002313, "fmi_path is only valid for an agent identity blueprint.")
    if is_exchange_scope(scope):
        return _app_body(state, state.minter.t2(tenant, agent))
    resource = default_scope_resource(directory, scope, tenant)
    roles = app_roles(directory, agent.app_id, resource)
    return _app_body(state, state.minter.app_token(tenant, agent.app_id, agent.app_id, resource, roles, bp.app_id))


def _user_body(
    state: EmulatorState, tenant: str, client: Client, user: User, scopes: DelegatedScopes,
    kind: str, form: Mapping[str, str],
) -> dict[str, Any]:
    parent = client.blueprint.app_id if client.agent else None
    minted = state.minter.user_token(tenant, client.client_id, user, scopes.resource, scopes.scopes, kind, parent)
    body = _app_body(state, minted)
    body["scope"] = " ".join(scopes.echoed)
    if "offline_access" in scopes.oidc:
        rt = "0.ARefresh." + secrets.token_urlsafe(48)
        state.refresh_tokens[rt] = RefreshGrant(
            client.client_id, user.oid, tenant, scopes.resource.app_id, scopes.scopes, kind,
            time.time() + state.settings.refresh_token_lifetime,
        )
        body["refresh_token"] = rt
    if scopes.oidc & {"openid", "profile"}:
        body["id_token"] = state.minter.id_token(tenant, client.client_id, user)
    if form.get("client_info") == "1":
        body["client_info"] = client_info(user)
    return body


def _obo(state: EmulatorState, tenant: str, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
    rtu = form.get("requested_token_use")
    if rtu is None:
        raise missing_param("requested_token_use")
    if rtu != "on_behalf_of":
        raise invalid_request(9002313, f"requested_token_use '{rtu}' is not valid for this grant.")
    assertion = form.get("assertion")
    if not assertion:
        raise missing_param("assertion")
    scope = form.get("scope")
    if not scope:
        raise missing_param("scope")
    claims = _verified(state, tenant, assertion, "Assertion failed signature validation.")
    if claims.get("idtyp") != "user" or "scp" not in claims:
        raise bad_assertion("The assertion is not a delegated user token.")
    bp_id = client.blueprint.app_id
    if claims.get("aud") not in (bp_id, f"api://{bp_id}"):
        raise invalid_grant(
            500131,
            f"Assertion audience does not match the Client app presenting the assertion. The audience in "
            f"the assertion was '{claims.get('aud')}' and the expected audience is '{bp_id}'.",
        )
    user = _user_or_fail(state, tenant, str(claims.get("oid", "")))
    scopes = delegated_scopes(state.directory, client.client_id, scope, tenant, user.oid)
    kind = "obo" if client.agent else "blueprint_obo"
    return _user_body(state, tenant, client, user, scopes, kind, form)


def _verified(state: EmulatorState, tenant: str, token: str, refusal: str) -> dict[str, Any]:
    """The claims of a token this emulator issued in ``tenant`` (a user assertion or a T2);
    refused with ``refusal`` and the reason when it is not valid, AADSTS500133 when expired."""
    return verify_emulator_token(
        token, state.keys, state.issuer(tenant),
        expired=lambda: invalid_grant(500133, "Assertion is not within its valid time range."),
        invalid=lambda d: bad_assertion(f"{refusal} {d}"),
        memo=state.verified,
    )


def _user_or_fail(state: EmulatorState, tenant: str, key: str) -> User:
    user = state.directory.user(key) if key else None
    if user is None or user.tenant != tenant:
        raise invalid_grant(50034, f"The user account {key} does not exist in the {tenant} directory.")
    return user


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _user_fic(state: EmulatorState, tenant: str, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
    agent = client.agent
    if agent is None:
        raise EntraError(
            700016, "unauthorized_client", "The user_fic grant is only available to agent identities."
        )
    t2 = form.get("user_federated_identity_credential")
    if not t2:
        raise missing_param("user_federated_identity_credential")
    rtu = form.get("requested_token_use")
    if rtu is not None and rtu != "on_behalf_of":
        raise invalid_request(9002313, f"requested_token_use '{rtu}' is not valid for this grant.")
    scope = form.get("scope")
    if not scope:
        raise missing_param("scope")
    claims = _verified(state, tenant, t2, "user_federated_identity_credential is not valid.")
    if (
        claims.get("aud") != demo.TOKEN_EXCHANGE_APP_ID
        or claims.get("sub") != agent.app_id
        or claims.get("azp") != agent.app_id
        or claims.get("xms_par_app_azp") != agent.blueprint
    ):
        raise bad_assertion(
            f"user_federated_identity_credential is not an exchange token of agent identity '{agent.app_id}'."
        )
    username, user_id = form.get("username"), form.get("user_id")
    if username and user_id:
        raise invalid_request(9002313, "Only one of 'username' and 'user_id' may be given.")
    if not username and not user_id:
        raise missing_param("username")
    if user_id and not _is_guid(user_id):
        raise EntraError(50000, "server_error", "There was an error issuing a token or an issue with our sign-in service.")
    user = _user_or_fail(state, tenant, (user_id or username or ""))
    if user.agent_identity != agent.app_id:
        raise invalid_grant(9002313, f"User '{user.oid}' is not the agent user of agent identity '{agent.app_id}'.")
    scopes = delegated_scopes(state.directory, agent.app_id, scope, tenant, user.oid)
    return _user_body(state, tenant, client, user, scopes, "user_fic", form)


def _refresh(state: EmulatorState, tenant: str, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
    rt = form.get("refresh_token")
    if not rt:
        raise missing_param("refresh_token")
    grant = state.refresh_tokens.get(rt)
    if grant is None or grant.client_id != client.client_id or grant.tenant != tenant:
        raise invalid_grant(9002313, "The provided refresh token is not valid for this client.")
    if grant.expires_at <= time.time():
        state.refresh_tokens.pop(rt, None)
        raise invalid_grant(700082, "The refresh token has expired due to inactivity.")
    user = _user_or_fail(state, tenant, grant.user_oid)
    scope = form.get("scope")
    resource = state.directory.resources.get(grant.resource)
    if resource is None:
        raise invalid_grant(9002313, "The provided refresh token is not valid for this client.")
    if not scope:
        scope = " ".join(f"{resource.identifier_uri}/{s}" for s in grant.scopes) + " offline_access"
    scopes = delegated_scopes(state.directory, client.client_id, scope, tenant, user.oid)
    return _user_body(state, tenant, client, user, scopes, grant.kind, form)
