"""Contract: Microsoft's own Python client (``microsoft-agents-authentication-entra-auth-sidecar``,
pinned in the ``test`` extra) works unchanged against a real ``serve`` process at default
configuration (no ``Sidecar__AllowOverrides__*`` set).

The client always sends ``optionsOverride.AcquireTokenOptions.Tenant=<tenant>`` and, for
the instance and user tokens, ``optionsOverride.Scopes=<its configured scopes>`` on
``/AuthorizationHeaderUnauthenticated``: no-op overrides, accepted whatever the flag says.
An override that changes the request is refused, and the client's exception (which shows only
the problem's ``title``) names the cause.

``agenticblueprint`` is configured the way Microsoft's Agents samples configure it
(microsoft/Agents ``samples/python/entra-agent-id-sidecar/compose.yaml``):
``DownstreamApis__agenticblueprint__Scopes__0=api://AzureAdTokenExchange/.default`` and
``__RequestAppToken=true``; ``get_agentic_application_token`` then returns the blueprint's
exchange token for the agent (``azp`` = blueprint), as MSAL-based Agents SDKs acquire it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from microsoft_agents.authentication.entra_auth_sidecar import SidecarAuth
from microsoft_agents.authentication.entra_auth_sidecar.sidecar_token_credential import SidecarTokenCredential

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.helpers import claims_of
from tests.integration.serve_process import Served, serve_process

A1 = demo.AGENT_1_ID
GRAPH_SCOPE = f"{demo.GRAPH_RESOURCE}/.default"
GRAPH_AUDS = (demo.GRAPH_RESOURCE, demo.GRAPH_APP_ID)
AGENTIC_BLUEPRINT = {
    "DownstreamApis__agenticblueprint__Scopes__0": "api://AzureAdTokenExchange/.default",
    "DownstreamApis__agenticblueprint__RequestAppToken": "true",
}


def client_configuration(served: Served) -> dict[str, Any]:
    """The Agents SDK connection settings (what SETTINGS__* environment keys become)."""
    return {
        "AUTHTYPE": "EntraAuthSideCar",
        "CLIENTID": demo.BLUEPRINT_APP_ID,
        "TENANTID": demo.TENANT_ID,
        "SERVICE_NAME": "graph",
        "SCOPES": [GRAPH_SCOPE],
        "SIDECAR_BASE_URL": served.base,
        "RETRY_COUNT": 0,
    }


def first_line(exc: BaseException) -> str:
    """The client's message (it appends its own error code and help URL on further lines)."""
    return str(exc).splitlines()[0]


@pytest.fixture
async def served(
    emulator: EmulatorServer, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Served]:
    monkeypatch.delenv("SIDECAR_URL", raising=False)  # it would win over SIDECAR_BASE_URL
    with serve_process(emulator, **AGENTIC_BLUEPRINT) as running:
        yield running
    # The gated refusals below were logged once each, naming the key that would allow them.
    warnings = [e["msg"] for e in running.log if e["level"] == "warning" and e["logger"].endswith("refusals")]
    flag = "Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated"
    assert sum("override not allowed: optionsOverride.Scopes" in w and flag in w for w in warnings) == 1, warnings
    assert sum("ForceRefresh" in w and flag in w for w in warnings) == 1, warnings


async def test_sidecar_auth_token_methods_at_default_configuration(served: Served, admin: EmulatorAdmin) -> None:
    auth = SidecarAuth(client_configuration(served))
    try:
        instance, same = await auth.get_agentic_instance_token(demo.TENANT_ID, A1)
        claims = claims_of(instance)
        assert instance == same
        assert claims["sub"] == A1 and claims["oid"] == A1 and claims["idtyp"] == "app"
        assert claims["aud"] in GRAPH_AUDS and claims["tid"] == demo.TENANT_ID

        by_upn = claims_of(await auth.get_agentic_user_token(demo.TENANT_ID, A1, demo.AGENT_USER_UPN, []) or "")
        by_oid = claims_of(
            await auth.get_agentic_user_token(demo.TENANT_ID, A1, demo.AGENT_USER_OID, [GRAPH_SCOPE]) or ""
        )
        for user in (by_upn, by_oid):
            assert user["idtyp"] == "user" and user["oid"] == demo.AGENT_USER_OID
            assert user["aud"] in GRAPH_AUDS

        app = claims_of(await auth.get_access_token(demo.GRAPH_RESOURCE, [GRAPH_SCOPE]))
        assert app["azp"] == demo.BLUEPRINT_APP_ID and app["idtyp"] == "app" and app["aud"] in GRAPH_AUDS

        credential = SidecarTokenCredential(client_configuration(served), provider=auth)
        access = await credential.get_token(GRAPH_SCOPE)
        assert claims_of(access.token)["azp"] == demo.BLUEPRINT_APP_ID
        assert access.expires_on == claims_of(access.token)["exp"]

        blueprint = claims_of(await auth.get_agentic_application_token(demo.TENANT_ID, A1) or "")
        assert blueprint["azp"] == demo.BLUEPRINT_APP_ID and blueprint["idtyp"] == "app"
        assert blueprint["aud"] in (demo.TOKEN_EXCHANGE_RESOURCE, demo.TOKEN_EXCHANGE_APP_ID)

        # The tenant in another case is the same tenant: served from the broker's cache, no Entra call.
        before = admin.counts()
        again, _ = await auth.get_agentic_instance_token(demo.TENANT_ID.upper(), A1)
        assert again == instance and admin.counts() == before

        # Overrides that change the request are refused, and the client's message says why.
        with pytest.raises(ValueError) as scopes_refused:
            await credential.get_token(f"{demo.DEMO_API_RESOURCE}/.default")
        assert first_line(scopes_refused.value) == "Sidecar returned 400: override not allowed: optionsOverride.Scopes"
        with pytest.raises(ValueError) as force_refused:
            await auth.get_access_token(demo.GRAPH_RESOURCE, [GRAPH_SCOPE], force_refresh=True)
        assert first_line(force_refused.value) == (
            "Sidecar returned 400: override not allowed: optionsOverride.AcquireTokenOptions.ForceRefresh"
        )
    finally:
        await auth.close()
