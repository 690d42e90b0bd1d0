"""The query-parameter table: known names only, case-insensitive, one canonical parse."""

from __future__ import annotations

import pytest
from microsoft_agents.authentication.entra_auth_sidecar._models import SidecarRequestOptions
from microsoft_agents.authentication.entra_auth_sidecar.sidecar_http_client import SidecarHttpClient
from multidict import MultiDict
from yarl import URL

from agent_token_broker.api.params import (
    PARAMETERS,
    Family,
    Kind,
    ParsedQuery,
    accepted_names,
    lookup,
    parse_query,
    parse_query_string,
)
from agent_token_broker.api.problems import ProblemError

AGENT = "a1a1a1a1-0001-4e6f-9a1b-1c2d3e4f5a61"
USER = "b1b1b1b1-0001-4c3d-8e9f-0a1b2c3d4e51"
TENANT = "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14"

# Every query name Microsoft's sidecar binds (reference/microsoft-sidecar.md section 1.1).
MICROSOFT_NAMES = [
    "AgentIdentity", "AgentUsername", "AgentUserId",
    "optionsOverride.Scopes", "optionsOverride.RequestAppToken", "optionsOverride.RelativePath",
    "optionsOverride.HttpMethod", "optionsOverride.ContentType", "optionsOverride.AcceptHeader",
    "optionsOverride.BaseUrl",
    "optionsOverride.AcquireTokenOptions.Tenant", "optionsOverride.AcquireTokenOptions.ForceRefresh",
    "optionsOverride.AcquireTokenOptions.Claims", "optionsOverride.AcquireTokenOptions.CorrelationId",
    "optionsOverride.AcquireTokenOptions.FmiPath",
    "optionsOverride.AcquireTokenOptions.LongRunningWebApiSessionKey",
    "optionsOverride.AcquireTokenOptions.PopPublicKey",
    "optionsOverride.AcquireTokenOptions.ManagedIdentity.UserAssignedClientId",
    "optionsOverride.ExtraHeaderParameters.X-Custom", "optionsOverride.ExtraQueryParameters.api-version",
]  # fmt: skip


def refused(raw: str, family: Family) -> ProblemError:
    with pytest.raises(ProblemError) as info:
        parse_query(URL.build(query_string=raw, encoded=True).query, family)
    return info.value


@pytest.mark.parametrize("name", MICROSOFT_NAMES)
def test_every_name_microsofts_sidecar_binds_is_known(name: str) -> None:
    param = lookup(name) or lookup(name.upper()) or lookup(name.lower())
    assert param is not None, name
    assert lookup(name.lower()) is param and lookup(name.upper()) is param  # case-insensitive


def test_what_microsofts_python_client_sends_parses() -> None:
    """The real client's query builder, with every option it has set."""
    for user in ({"agent_username": "agent-user-1@demo.example"}, {"agent_user_id": USER}):
        options = SidecarRequestOptions(
            agent_identity=AGENT,
            scopes=["https://graph.microsoft.com/.default", "api://x/.default"],
            request_app_token=True,
            tenant=TENANT,
            force_refresh=True,
            **user,  # type: ignore[arg-type]
        )
        raw = "&".join(SidecarHttpClient._build_query_params(options))
        parsed = parse_query_string(raw, Family.HEADER)
        assert parsed.agent == AGENT and parsed.tenant == TENANT and parsed.force_refresh
        assert parsed.scopes == ("https://graph.microsoft.com/.default", "api://x/.default")
        assert parsed.username or parsed.user_object_id


@pytest.mark.parametrize("family", [Family.HEADER, Family.DOWNSTREAM, Family.MSI])
@pytest.mark.parametrize("name", ["AgentIdentiy", "optionsOverride.Scope", "foo", "", "optionsOverride.ExtraHeaderParameters."])
def test_unknown_names_are_refused_with_the_accepted_ones(family: Family, name: str) -> None:
    err = refused(f"{name}=x", family)
    assert err.status == 400 and err.slug == "unknown-parameter"
    assert err.title.startswith("unknown query parameter: ")
    for accepted in accepted_names(family):
        assert accepted in err.detail


def test_a_typo_gets_a_suggestion_and_the_name_is_shown_safely() -> None:
    err = refused(f"agentidentiy={AGENT}", Family.HEADER)
    assert err.title == "unknown query parameter: agentidentiy" and "did you mean AgentIdentity?" in err.detail
    err = refused("%0Abad%1Bname=1", Family.HEADER)
    assert "\n" not in err.title and "\x1b" not in err.title
    long = refused("x" * 300 + "=1", Family.HEADER)
    assert len(long.title) < 100


def test_parameters_of_another_route_are_refused_with_where_they_belong() -> None:
    err = refused("optionsOverride.RelativePath=me", Family.HEADER)
    assert err.slug == "unknown-parameter" and "/DownstreamApi* only" in err.detail
    assert refused(f"AgentIdentity={AGENT}", Family.MSI).slug == "unknown-parameter"
    assert refused("resource=https://graph.microsoft.com", Family.HEADER).slug == "unknown-parameter"


def test_refused_overrides_say_why() -> None:
    err = refused("optionsOverride.BaseUrl=https://evil.example", Family.DOWNSTREAM)
    assert err.slug == "unsupported-override" and err.title == "override not supported: optionsOverride.BaseUrl"
    assert "configuration only" in err.detail


def test_spelling_order_and_repetition_give_one_canonical_request() -> None:
    a = parse_query_string(f"AgentIdentity={AGENT}&optionsOverride.Scopes=s1&optionsOverride.Scopes=s2", Family.HEADER)
    b = parse_query_string(
        f"optionsoverride.scopes=s1%20s2&AGENTIDENTITY={AGENT.upper()}&optionsOverride.Scopes=s1", Family.HEADER
    )
    assert a == b and hash(a) == hash(b)
    assert a.overrides == frozenset({"optionsOverride.Scopes"})


def test_call_overrides_keep_the_downstream_names_case() -> None:
    q = parse_query(
        MultiDict(
            [("optionsoverride.extraqueryparameters.$Select", "id"), ("optionsOverride.RelativePath", "me")]
        ),
        Family.DOWNSTREAM,
    )
    assert q.call_overrides == {"extraqueryparameters.$Select": "id", "relativepath": "me"}
    assert q.overrides == {"optionsOverride.ExtraQueryParameters.$Select", "optionsOverride.RelativePath"}


def test_msi_parameters() -> None:
    q = parse_query_string("api-version=2019-08-01&resource=https://vault.azure.net&client_id=" + AGENT.upper(), Family.MSI)
    assert q == ParsedQuery(agent=AGENT, resource="https://vault.azure.net")
    for raw, words in (
        ("resource=x", "api-version is required"),
        ("api-version=2018-02-01&resource=x", "2019-08-01"),
        ("api-version=2019-08-01", "resource is required"),
        ("api-version=2019-08-01&resource=x&principal_id=" + AGENT, "principal_id is not supported"),
        ("api-version=2019-08-01&resource=x&client_id=nope", "GUID"),
        ("api-version=2019-08-01&resource=a%20b", "without spaces"),
    ):
        assert words in refused(raw, Family.MSI).detail, raw


def test_the_table_is_consistent() -> None:
    names = [p.name.lower() for p in PARAMETERS]
    assert len(names) == len(set(names))
    for p in PARAMETERS:
        assert p.routes, p.name
        assert (p.parse is None) == (p.kind is Kind.UNSUPPORTED), p.name
        assert p.kind is not Kind.UNSUPPORTED or p.reason, p.name
        assert (p.key is not None) == (p.kind is Kind.CALL_OVERRIDE), p.name


def test_long_queries_are_parsed_but_not_remembered() -> None:
    from agent_token_broker.api import params

    before = params._parse_memo.cache_info().currsize
    claims = "%7B%22a%22%3A%22" + "b" * params.PARSE_MEMO_MAX_QUERY + "%22%7D"
    long = f"AgentIdentity={AGENT}&optionsOverride.AcquireTokenOptions.Claims={claims}"
    assert parse_query_string(long, Family.HEADER).claims == '{"a":"' + "b" * params.PARSE_MEMO_MAX_QUERY + '"}'
    assert params._parse_memo.cache_info().currsize == before
