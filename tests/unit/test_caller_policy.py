"""Per-caller policy (Broker__Callers__*) as pure functions: settings in, match and verdict out."""

from __future__ import annotations

import pytest

from agent_token_broker.api.caller_policy import check, check_match, compile_table, match
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.callers import CallerIdentity
from agent_token_broker.settings import ConfigError, load_settings
from agent_token_broker.tokens import Flow, TokenRequest
from tests.unit.test_policy import AGENT, BASE, CLIENT, DEMO, GRAPH

OTHER_AGENT = "b2b2b2b2-0002-4e6f-9a1b-1c2d3e4f5a62"
AGENT_ENTRY = {
    "Broker__Callers__agent__Uid": "10010",
    "Broker__Callers__agent__AllowedAgentIdentities__0": AGENT,
    "Broker__Callers__sandbox__Uid": "10020",
}


def table(**extra: str):  # type: ignore[no-untyped-def]
    return compile_table(load_settings(env={**BASE, **extra}))


def tcp(uid: int | None) -> CallerIdentity:
    return CallerIdentity("tcp", uid=uid, peer="127.0.0.1:40000", source="sock_diag")


def app(agent: str | None = AGENT, scopes: tuple[str, ...] = (GRAPH,)) -> TokenRequest:
    return TokenRequest(Flow.AGENT_APP if agent else Flow.BLUEPRINT_APP, scopes=scopes, agent=agent)


def refused(fn, *args) -> ProblemError:  # type: ignore[no-untyped-def]
    with pytest.raises(ProblemError) as info:
        fn(*args)
    assert info.value.status == 403 and info.value.slug == "caller-not-allowed"
    return info.value


def test_the_issue_example_agent_gets_its_agent_and_the_sandbox_nothing() -> None:
    t = table(**AGENT_ENTRY)
    agent, sandbox = match(t, tcp(10010)), match(t, tcp(10020))
    assert agent is not None and agent.name == "agent"
    assert sandbox is not None and sandbox.name == "sandbox" and sandbox.allows_nothing
    check(t, agent, tcp(10010), "graph", app())
    err = refused(check, t, agent, tcp(10010), "graph", app(OTHER_AGENT))
    assert "uid 10010" in err.detail and "Broker__Callers__agent" in err.detail
    assert err.config_key == "Broker__Callers__agent__AllowedAgentIdentities"
    assert err.title == "caller not allowed: uid 10010"
    err = refused(check, t, sandbox, tcp(10020), "graph", app())
    assert "uid 10020" in err.detail and err.config_key == "Broker__Callers__sandbox"
    # the blueprint's own tokens are not "its agent"
    refused(check, t, agent, tcp(10010), "graph", app(None))


def test_unmatched_callers_get_the_global_policy_unless_require_match() -> None:
    t = table(**AGENT_ENTRY)
    assert match(t, tcp(10030)) is None
    check(t, None, tcp(10030), "graph", app(OTHER_AGENT))
    strict = table(**AGENT_ENTRY, Broker__Strict="true")
    assert strict.require_match, "RequireMatch is on in strict mode when a caller is configured"
    err = refused(check_match, strict, None, tcp(10030))
    assert "uid 10030" in err.detail and err.config_key == "Broker__Callers__RequireMatch"
    err = refused(check_match, strict, None, tcp(None))
    assert "uid unknown" in err.detail
    assert not table(Broker__Strict="true").require_match, "no caller configured: nothing to require"
    assert not table(**AGENT_ENTRY, Broker__Strict="true", Broker__Callers__RequireMatch="false").require_match


def test_apis_and_flows_narrow_and_msi_uses_the_allowed_apis_resources() -> None:
    t = table(
        Broker__Callers__tools__Uid="10040",
        Broker__Callers__tools__AllowedApis__0="Demo",
        Broker__Callers__tools__AllowedFlows__0="app",
    )
    rule = match(t, tcp(10040))
    assert rule is not None
    check(t, rule, tcp(10040), "demo", app(scopes=(DEMO,)))
    assert refused(check, t, rule, tcp(10040), "graph", app()).config_key.endswith("__AllowedApis")
    obo = TokenRequest(Flow.AGENT_OBO, scopes=(DEMO,), agent=AGENT, user_assertion="x")
    assert refused(check, t, rule, tcp(10040), "demo", obo).config_key.endswith("__AllowedFlows")
    # /msi/token (api None): the resource must be an allowed API's
    check(t, rule, tcp(10040), None, app(scopes=("api://demo-downstream/.default",)))
    refused(check, t, rule, tcp(10040), None, app(scopes=("https://graph.microsoft.com/.default",)))


def test_blueprint_tokens_need_the_blueprint_id_listed() -> None:
    t = table(Broker__Callers__bp__Uid="5", Broker__Callers__bp__AllowedAgentIdentities__0=CLIENT)
    rule = match(t, tcp(5))
    check(t, rule, tcp(5), "graph", app(None))
    refused(check, t, rule, tcp(5), "graph", app())


def test_most_specific_entry_wins_and_gid_needs_a_known_gid() -> None:
    t = table(
        Broker__Callers__group__Gid="300",
        Broker__Callers__user__Uid="100",
        Broker__Callers__both__Uid="100",
        Broker__Callers__both__Gid="300",
    )
    unix = CallerIdentity("unix", uid=100, gid=300, pid=1, peer="unix", source="peercred")
    assert match(t, unix).name == "both"  # type: ignore[union-attr]
    assert match(t, CallerIdentity("unix", uid=100, gid=1)).name == "user"  # type: ignore[union-attr]
    assert match(t, CallerIdentity("unix", uid=7, gid=300)).name == "group"  # type: ignore[union-attr]
    assert match(t, tcp(100)).name == "user"  # type: ignore[union-attr]  # TCP: no gid known
    assert match(t, tcp(None)) is None


def test_empty_list_allows_none_of_that_dimension() -> None:
    t = table(Broker__Callers__x__Uid="1", Broker__Callers__x__AllowedApis="")
    refused(check, t, match(t, tcp(1)), tcp(1), "graph", app())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"Broker__Callers__x__AllowedApis__0": "grpah", "Broker__Callers__x__Uid": "1"}, "grpah: not a configured DownstreamApis name"),
        ({"Broker__Callers__x__AllowedFlows__0": "user", "Broker__Callers__x__Uid": "1"}, "unknown flow 'user'"),
        ({"Broker__Callers__x__AllowedAgentIdentities__0": "me"}, "Broker__Callers__x__Uid: required (or Gid)"),
        ({"Broker__Callers__x__Uid": "-1"}, "Broker__Callers__x__Uid: must be between"),
        ({"Broker__Callers__a__Uid": "1", "Broker__Callers__b__Uid": "1"}, "matches the same uid/gid"),
        ({"Broker__Callers__x__Uid": "1", "Broker__Callers__x__AllowedApi__0": "graph"}, "AllowedApi: unknown key"),
        ({"Broker__Callers__has space__Uid": "1"}, "a caller name is"),
        ({"Broker__Callers__RequireMatch": "yes"}, "must be true or false"),
    ],
)
def test_misspelt_or_contradictory_entries_are_config_errors(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={**BASE, **extra})
    assert any(message in line for line in info.value.problems), info.value.problems
