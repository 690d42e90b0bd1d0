"""The token policy as pure functions: settings + parsed request in, token request or refusal out."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from agent_token_broker.api import policy
from agent_token_broker.api.gate import decide
from agent_token_broker.api.params import Family, ParsedQuery, parse_query
from agent_token_broker.api.policy import Route
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.settings import Settings, load_settings
from agent_token_broker.tokens import Flow

TENANT = "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14"
OTHER_TENANT = "c0ffee00-1234-4abc-8def-0123456789ab"
CLIENT = "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58"
AGENT = "a1a1a1a1-0001-4e6f-9a1b-1c2d3e4f5a61"
GRAPH = "https://graph.microsoft.com/.default"
DEMO = "api://demo-downstream/.default"
BASE = {
    "AzureAd__TenantId": TENANT,
    "AzureAd__ClientId": CLIENT,
    "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
    "AzureAd__ClientCredentials__0__ClientSecret": "a-secret-for-unit-tests",
    "DownstreamApis__graph__Scopes__0": GRAPH,
    "DownstreamApis__graph__BaseUrl": "https://graph.microsoft.com/v1.0/",
    "DownstreamApis__demo__Scopes__0": DEMO,
}
EXCHANGE_VARIANTS = [
    "api://AzureADTokenExchange/.default",
    "api://azureadtokenexchange/.default",
    "API://AZUREADTOKENEXCHANGE",
    "api://AzureADTokenExchange/",
    "api://AzureADTokenExchange//.default",
    "api://AzureAdTokenExchange/.default/",
    "api://AzureADTokenExchangeChina/.default",
    "fb60f99c-7a34-4190-8149-302f77469936/.default",
    "FB60F99C-7A34-4190-8149-302F77469936",
]


def settings(**extra: str) -> Settings:
    return load_settings(env={**BASE, **extra})


def query(*pairs: tuple[str, str], family: Family = Family.HEADER) -> ParsedQuery:
    return parse_query(MultiDict(pairs), family)


def refusal(fn: object, *args: object, **kwargs: object) -> ProblemError:
    with pytest.raises(ProblemError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value


# -- no-op overrides ----------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [TENANT, TENANT.upper(), "{" + TENANT + "}", "urn:uuid:" + TENANT])
def test_the_configured_tenant_in_any_guid_spelling_is_a_noop(tenant: str) -> None:
    q = query(("AgentIdentity", AGENT), ("optionsOverride.AcquireTokenOptions.Tenant", tenant))
    assert policy.changing_overrides(settings(), Route.HEADER_UNAUTH, settings().downstream_apis["graph"], q) == []
    req = decide(settings(), Route.HEADER_UNAUTH, "graph", q)
    assert req.tenant is None and req.flow is Flow.AGENT_APP


def test_the_tenant_domain_name_is_a_noop_only_when_configured() -> None:
    q = query(("optionsOverride.AcquireTokenOptions.Tenant", "Contoso.onmicrosoft.com"))
    with_domain = settings(AzureAd__Domain="contoso.OnMicrosoft.com")
    assert decide(with_domain, Route.HEADER_UNAUTH, "graph", q).tenant is None
    err = refusal(decide, settings(), Route.HEADER_UNAUTH, "graph", q)
    assert err.status == 400 and err.title == "override not allowed: optionsOverride.AcquireTokenOptions.Tenant"
    assert err.config_key == "Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated"


def test_another_tenant_is_refused_where_overrides_are_off_and_applied_where_on() -> None:
    q = query(("AgentIdentity", AGENT), ("optionsOverride.AcquireTokenOptions.Tenant", OTHER_TENANT))
    assert refusal(decide, settings(), Route.HEADER_UNAUTH, "graph", q).slug == "override-not-allowed"
    allowed = settings(Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated="true")
    assert decide(allowed, Route.HEADER_UNAUTH, "graph", q).tenant == OTHER_TENANT


@pytest.mark.parametrize(
    "scopes",
    [
        [GRAPH],
        [GRAPH.upper()],
        [GRAPH, GRAPH],  # duplicates
        [f"{GRAPH} {GRAPH}"],  # space-separated in one value
        [f" {GRAPH} "],
    ],
)
def test_the_configured_scopes_as_a_set_are_a_noop(scopes: list[str]) -> None:
    q = query(("AgentIdentity", AGENT), *(("optionsOverride.Scopes", s) for s in scopes))
    req = decide(settings(), Route.HEADER_UNAUTH, "graph", q)
    assert req.scopes == (GRAPH,)


def test_scope_sets_in_another_order_are_a_noop() -> None:
    two = settings(DownstreamApis__graph__Scopes__1="https://graph.microsoft.com/User.Read")
    q = query(("optionsOverride.Scopes", "https://graph.microsoft.com/User.Read"), ("optionsOverride.Scopes", GRAPH))
    assert decide(two, Route.HEADER_UNAUTH, "graph", q).scopes == (GRAPH, "https://graph.microsoft.com/User.Read")


@pytest.mark.parametrize(
    "scopes",
    [[DEMO], [GRAPH, DEMO], ["https://graph.microsoft.com/User.Read"]],
)
def test_a_different_scope_set_is_still_refused(scopes: list[str]) -> None:
    q = query(*(("optionsOverride.Scopes", s) for s in scopes))
    err = refusal(decide, settings(), Route.HEADER_UNAUTH, "graph", q)
    assert err.status == 400 and err.title == "override not allowed: optionsOverride.Scopes"


def test_force_refresh_false_and_request_app_token_where_implied_are_noops() -> None:
    q = query(
        ("AgentIdentity", AGENT),
        ("optionsOverride.AcquireTokenOptions.ForceRefresh", "false"),
        ("optionsOverride.RequestAppToken", "true"),
    )
    assert decide(settings(), Route.HEADER_UNAUTH, "graph", q).flow is Flow.AGENT_APP
    # RequestAppToken=false cannot turn an app token off: a no-op too.
    assert decide(settings(), Route.HEADER_UNAUTH, "graph", query(("optionsOverride.RequestAppToken", "false"))).flow is (
        Flow.BLUEPRINT_APP
    )
    forced = query(("optionsOverride.AcquireTokenOptions.ForceRefresh", "true"))
    assert refusal(decide, settings(), Route.HEADER_UNAUTH, "graph", forced).title.endswith("ForceRefresh")


def test_request_app_token_on_the_authenticated_route_is_a_noop_only_if_configured() -> None:
    q = query(("AgentIdentity", AGENT), ("optionsOverride.RequestAppToken", "true"))
    off = settings(Sidecar__AllowOverrides__GetAuthorizationHeader="false")
    assert policy.changing_overrides(off, Route.HEADER, off.downstream_apis["graph"], q) == [
        "optionsOverride.RequestAppToken"
    ]
    app_api = settings(Sidecar__AllowOverrides__GetAuthorizationHeader="false", DownstreamApis__graph__RequestAppToken="true")
    assert decide(app_api, Route.HEADER, "graph", q, user_assertion="u").flow is Flow.AGENT_APP


def test_call_options_equal_to_the_configuration_are_noops() -> None:
    s = settings(DownstreamApis__graph__RelativePath="me", DownstreamApis__graph__HttpMethod="GET")
    config = s.downstream_apis["graph"]
    same = query(("optionsOverride.RelativePath", "me"), ("optionsOverride.HttpMethod", "get"), family=Family.DOWNSTREAM)
    assert policy.changing_overrides(s, Route.CALL_UNAUTH, config, same) == []
    other = query(("optionsOverride.RelativePath", "users"), family=Family.DOWNSTREAM)
    assert refusal(decide, s, Route.CALL_UNAUTH, "graph", other).title == (
        "override not allowed: optionsOverride.RelativePath"
    )


# -- scopes the caller chooses -------------------------------------------------------------


@pytest.mark.parametrize("scope", EXCHANGE_VARIANTS)
def test_the_exchange_audience_is_never_a_caller_chosen_scope(scope: str) -> None:
    assert policy.is_exchange_audience(scope)
    q = query(("AgentIdentity", AGENT), ("optionsOverride.Scopes", scope))
    for s in (settings(), settings(Broker__Strict="true"), settings(DownstreamApis__graph__AllowedScopes__0=scope)):
        for api in ("graph", "unknown-api"):
            if s.strict and api == "unknown-api":
                continue
            err = refusal(decide, s, Route.HEADER, api, q, user_assertion="u")
            assert err.status == 403 and err.slug == "exchange-audience", (scope, api)


@pytest.mark.parametrize(
    "scope", [GRAPH, DEMO, "api://contoso/AzureADTokenExchange", "https://azureadtokenexchange.example", "User.Read", "openid"]
)
def test_other_scopes_are_not_the_exchange_audience(scope: str) -> None:
    assert not policy.is_exchange_audience(scope)


def test_override_scopes_on_an_unknown_api() -> None:
    q = query(("optionsOverride.Scopes", DEMO))
    # Microsoft-compatible while no allow-list exists anywhere ...
    assert decide(settings(), Route.HEADER, "zzz", q, user_assertion="u").scopes == (DEMO,)
    # ... refused once any API has an allow-list ...
    listed = settings(DownstreamApis__demo__AllowedScopes__0=DEMO)
    err = refusal(decide, listed, Route.HEADER, "zzz", q, user_assertion="u")
    assert err.status == 403 and err.slug == "scope-not-allowed" and err.config_key == "DownstreamApis__zzz__AllowedScopes"
    # ... and always in strict mode (404: the API does not exist).
    assert refusal(decide, settings(Broker__Strict="true"), Route.HEADER, "zzz", q, user_assertion="u").status == 404


def test_allow_lists_and_strict_mode() -> None:
    listed = settings(DownstreamApis__graph__AllowedScopes__0=GRAPH, DownstreamApis__graph__AllowedScopes__1=DEMO)
    assert decide(listed, Route.HEADER, "graph", query(("optionsOverride.Scopes", DEMO)), user_assertion="u").scopes == (DEMO,)
    outside = query(("optionsOverride.Scopes", "api://other/.default"))
    assert refusal(decide, listed, Route.HEADER, "graph", outside, user_assertion="u").slug == "scope-not-allowed"
    strict = settings(Broker__Strict="true")
    assert refusal(decide, strict, Route.HEADER, "graph", query(("optionsOverride.Scopes", DEMO)), user_assertion="u").status == 403


def test_agent_and_agent_user_allow_lists() -> None:
    s = settings(Broker__AllowedAgentIdentities__0=AGENT.upper(), Broker__AllowedAgentUsers__0="u@example.com")
    assert decide(s, Route.HEADER_UNAUTH, "graph", query(("AgentIdentity", AGENT))).agent == AGENT
    other = query(("AgentIdentity", "a2a2a2a2-0002-4e6f-9a1b-1c2d3e4f5a62"))
    err = refusal(decide, s, Route.HEADER_UNAUTH, "graph", other)
    assert err.slug == "agent-not-allowed" and err.config_key == "Broker__AllowedAgentIdentities"
    user = query(("AgentIdentity", AGENT), ("AgentUsername", "v@example.com"))
    assert refusal(decide, s, Route.HEADER_UNAUTH, "graph", user).slug == "agent-user-not-allowed"


# -- the audience of a token sent to a downstream API ---------------------------------------


@pytest.mark.parametrize(
    ("scope", "ok"),
    [
        (GRAPH, True),
        ("https://graph.microsoft.com/User.Read", True),
        ("User.Read", True),  # a bare scope name is Graph's
        (DEMO, False),
        ("api://demo-downstream/access", False),
        ("https://graph.microsoft.com.evil.example/.default", False),
    ],
)
def test_downstream_api_tokens_must_be_for_that_api(scope: str, ok: bool) -> None:
    s = settings(Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated="true")
    q = query(("optionsOverride.Scopes", scope), family=Family.DOWNSTREAM)
    if ok:
        assert decide(s, Route.CALL_UNAUTH, "graph", q).scopes == (scope,)
    else:
        err = refusal(decide, s, Route.CALL_UNAUTH, "graph", q)
        assert err.status == 403 and err.slug == "audience-not-for-api"
    # The header routes hand the token to the caller; no audience rule there.
    header = decide(s, Route.HEADER, "graph", query(("optionsOverride.Scopes", scope)), user_assertion="u")
    assert header.scopes == (scope,)


def test_base_url_counts_as_the_api_audience() -> None:
    s = settings(DownstreamApis__mine__BaseUrl="https://api.contoso.com/v2/", DownstreamApis__mine__Scopes__0="api://mine/.default")
    q = query(("optionsOverride.Scopes", "https://api.contoso.com/.default"), family=Family.DOWNSTREAM)
    assert decide(s, Route.CALL, "mine", q, user_assertion="u").scopes == ("https://api.contoso.com/.default",)


@pytest.mark.parametrize(
    ("scope", "resource"),
    [
        ("https://graph.microsoft.com/.default", "https://graph.microsoft.com"),
        ("https://graph.microsoft.com/User.Read", "https://graph.microsoft.com"),
        ("https://graph.microsoft.com", "https://graph.microsoft.com"),
        ("https://contoso.com/api/scope", "https://contoso.com/api"),
        ("api://x/.default", "api://x"),
        ("api://x", "api://x"),
        ("00000003-0000-0000-c000-000000000000/.default", "00000003-0000-0000-c000-000000000000"),
        ("00000003-0000-0000-c000-000000000000", "00000003-0000-0000-c000-000000000000"),
        ("Mail.Send", "https://graph.microsoft.com"),
        ("openid", None),
    ],
)
def test_resource_of(scope: str, resource: str | None) -> None:
    assert policy.resource_of(scope) == resource


# -- /msi/token --------------------------------------------------------------------------


def test_msi_resources_default_to_the_configured_apis() -> None:
    q = query(("api-version", "2019-08-01"), ("resource", "https://graph.microsoft.com/"), family=Family.MSI)
    s = settings(Broker__ManagedIdentityEndpoint__DefaultAgentIdentity=AGENT)
    req = decide(s, Route.MSI, None, q)
    assert req.flow is Flow.AGENT_APP and req.agent == AGENT and req.scopes == (GRAPH,)
    vault = query(("api-version", "2019-08-01"), ("resource", "https://vault.azure.net"), family=Family.MSI)
    err = refusal(decide, s, Route.MSI, None, vault)
    assert err.status == 403 and err.config_key == "Broker__ManagedIdentityEndpoint__AllowedResources"
    listed = settings(
        Broker__ManagedIdentityEndpoint__DefaultAgentIdentity=AGENT,
        Broker__ManagedIdentityEndpoint__AllowedResources__0="https://VAULT.azure.net/",
    )
    assert decide(listed, Route.MSI, None, vault).scopes == ("https://vault.azure.net/.default",)
    assert refusal(decide, listed, Route.MSI, None, q).slug == "resource-not-allowed"  # the list replaces the default


@pytest.mark.parametrize("resource", EXCHANGE_VARIANTS)
def test_msi_never_issues_the_exchange_audience(resource: str) -> None:
    q = query(("api-version", "2019-08-01"), ("resource", resource), ("client_id", AGENT), family=Family.MSI)
    s = settings(Broker__ManagedIdentityEndpoint__AllowedResources__0=resource)
    assert refusal(decide, s, Route.MSI, None, q).slug == "exchange-audience"


def test_msi_agent_allow_list_applies_to_the_default_agent_too() -> None:
    s = settings(
        Broker__AllowedAgentIdentities__0="a2a2a2a2-0002-4e6f-9a1b-1c2d3e4f5a62",
        Broker__ManagedIdentityEndpoint__DefaultAgentIdentity=AGENT,
    )
    q = query(("api-version", "2019-08-01"), ("resource", "https://graph.microsoft.com"), family=Family.MSI)
    assert refusal(decide, s, Route.MSI, None, q).slug == "agent-not-allowed"


# -- the agentic blueprint API and flows ---------------------------------------------------


def test_an_api_configured_with_the_exchange_scope_gives_the_blueprint_exchange_token() -> None:
    s = settings(
        DownstreamApis__agenticblueprint__Scopes__0="api://AzureAdTokenExchange/.default",
        DownstreamApis__agenticblueprint__RequestAppToken="true",
    )
    q = query(("AgentIdentity", AGENT), ("optionsOverride.AcquireTokenOptions.Tenant", TENANT))
    req = decide(s, Route.HEADER_UNAUTH, "agenticblueprint", q)
    assert req.flow is Flow.BLUEPRINT_FMI and req.agent == AGENT
    # Named by the caller instead, the same scope is refused (above); without an agent it is the blueprint's own.
    assert decide(s, Route.HEADER_UNAUTH, "agenticblueprint", query()).flow is Flow.BLUEPRINT_APP


def test_the_api_tenant_is_applied_and_naming_it_is_a_noop() -> None:
    s = settings(DownstreamApis__graph__AcquireTokenOptions__Tenant=OTHER_TENANT)
    assert decide(s, Route.HEADER_UNAUTH, "graph", query()).tenant == OTHER_TENANT
    q = query(("optionsOverride.AcquireTokenOptions.Tenant", OTHER_TENANT))
    assert decide(s, Route.HEADER_UNAUTH, "graph", q).tenant == OTHER_TENANT
    home = query(("optionsOverride.AcquireTokenOptions.Tenant", TENANT))
    assert refusal(decide, s, Route.HEADER_UNAUTH, "graph", home).slug == "override-not-allowed"


# -- the caller's token --------------------------------------------------------------------


def test_validate_scopes_is_one_check_for_validate_and_strict_routes() -> None:
    s = settings(AzureAd__Scopes="access_agent")
    policy.check_validate_scopes(s, {"scp": "other access_agent"})
    policy.check_validate_scopes(s, {"roles": ["access_agent"]})
    err = refusal(policy.check_validate_scopes, s, {"scp": "other"})
    assert err.status == 403 and err.config_key == "AzureAd__Scopes"
    policy.check_caller_token(s, {"scp": "other"})  # not strict: token routes do not require it
    strict = settings(AzureAd__Scopes="access_agent", Broker__Strict="true")
    assert refusal(policy.check_caller_token, strict, {"scp": "other"}).slug == "insufficient-scope"
    policy.check_validate_scopes(settings(), {})  # no AzureAd__Scopes: nothing required
