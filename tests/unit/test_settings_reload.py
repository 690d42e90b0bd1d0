"""What a reload sees as changed, and what it puts in force, derived from the key declarations."""

from __future__ import annotations

from typing import Any

import pytest

from agent_token_broker.settings import Settings, load_settings
from agent_token_broker.settings.changes import Change, changes, in_force, is_live
from agent_token_broker.settings.docs import rows
from agent_token_broker.settings.schema import declared

TENANT = "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14"
BLUEPRINT = "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58"
AGENT_1, AGENT_2 = "a1a1a1a1-0001-4c3d-8e9f-0a1b2c3d4e51", "a2a2a2a2-0002-4c3d-8e9f-0a1b2c3d4e52"
SECRET = "first-secret-value-0123456789"
# A reload that changes live keys (an allow-list, a miss rate) and restart keys (the listener, a
# parser limit, the credential); each test adds its own.
CHANGED = {
    "Broker__AllowedAgentIdentities__1": "<unset>",
    "Broker__Listen": "127.0.0.1:5001",
    "Broker__Limits__MaxHeaders": "32",
    "Broker__Limits__CacheMissesPerSecond": "5",
    "AzureAd__ClientCredentials__0__ClientSecret": "second-secret-value-0123456789",
}


def _settings(**extra: str) -> Settings:
    env = {
        "AzureAd__TenantId": TENANT,
        "AzureAd__ClientId": BLUEPRINT,
        "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
        "AzureAd__ClientCredentials__0__ClientSecret": SECRET,
        "DownstreamApis__graph__Scopes__0": "https://graph.microsoft.com/.default",
        "Broker__AllowedAgentIdentities__0": AGENT_1,
        "Broker__AllowedAgentIdentities__1": AGENT_2,
    }
    env.update(extra)
    return load_settings(env={k: v for k, v in env.items() if v != "<unset>"})


def test_the_same_configuration_has_no_changes() -> None:
    assert changes(_settings(), _settings()) == []


def test_changed_keys_are_named_with_their_reload_mark_and_no_values() -> None:
    old = _settings()
    new = _settings(
        **CHANGED,
        DownstreamApis__graph__Scopes__0="https://graph.microsoft.com/User.Read",
        DownstreamApis__demo__Scopes__0="api://demo/.default",
        Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated="true",
        Logging__LogLevel__Default="Debug",
    )
    found = changes(old, new)
    assert found == [
        Change("AzureAd__ClientCredentials__0__ClientSecret", live=False),
        Change("DownstreamApis__graph__Scopes", live=True),
        Change("DownstreamApis__demo", live=True),
        Change("Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated", live=True),
        Change("Broker__Listen", live=False),
        Change("Broker__AllowedAgentIdentities", live=True),
        Change("Broker__Limits__MaxHeaders", live=False),
        Change("Broker__Limits__CacheMissesPerSecond", live=True),
        Change("Logging__LogLevel__Default", live=True),
    ]
    assert "second-secret" not in repr(found) and SECRET not in repr(found)


def test_an_api_removed_or_a_credential_added_is_one_change() -> None:
    old = _settings(DownstreamApis__demo__Scopes__0="api://demo/.default")
    assert changes(old, _settings()) == [Change("DownstreamApis__demo", live=True)]
    more = _settings(
        AzureAd__ClientCredentials__1__SourceType="ClientSecret",
        AzureAd__ClientCredentials__1__ClientSecret="another-secret-value-0123456789",
    )
    assert changes(_settings(), more) == [Change("AzureAd__ClientCredentials", live=False)]
    redis = _settings(Broker__Cache__AdminSecret="an-admin-secret-of-16+")
    assert changes(_settings(), redis) == [Change("Broker__Cache__AdminSecret", live=False)]


def test_in_force_takes_live_keys_from_the_new_configuration_and_keeps_the_others() -> None:
    old = _settings()
    new = _settings(
        **CHANGED,
        Broker__Strict="true",
        Broker__Cache__MinRemainingSeconds="600",
        AzureAd__Scopes__0="access_agent",
    )
    merged = in_force(old, new)
    assert merged.security.allowed_agent_identities == (AGENT_1,)
    assert merged.security.limits.cache_misses_per_second == 5.0
    assert merged.strict and merged.security.require_header.enabled  # its default follows Strict
    assert merged.azure_ad.scopes == ("access_agent",)
    assert merged.listen == old.listen
    assert merged.security.limits.max_headers == old.security.limits.max_headers
    assert merged.cache == old.cache
    assert merged.azure_ad.credentials == old.azure_ad.credentials
    assert merged.azure_ad.client_id == old.azure_ad.client_id
    # What stays differs from the running configuration only in restart keys:
    assert all(not c.live for c in changes(merged, new))
    assert changes(old, merged) == [c for c in changes(old, new) if c.live]


def _walk(cls: Any, inherited: bool = False, path: str = "") -> list[tuple[str, bool, str]]:
    out = []
    for _name, key, shape, tp, _ in declared(cls):
        live = is_live(key, inherited)
        here = f"{path}__{key.name}" if path else key.name
        out.append((here, live, shape))
        if shape in ("section", "named", "indexed"):
            out += _walk(tp, live, here)
    return out


def test_named_and_indexed_entries_take_their_list_mark() -> None:
    """``in_force`` takes an entry list whole (DownstreamApis, ClientCredentials): no key of an
    entry may be marked otherwise than its list."""

    def entries_follow(cls: Any, live: bool) -> None:
        for _name, key, shape, tp, _ in declared(cls):
            assert key.live is None or key.live == live, key.name
            if shape in ("section", "named", "indexed"):
                entries_follow(tp, live)

    def visit(cls: Any, inherited: bool) -> int:
        found = 0
        for _name, key, shape, tp, _ in declared(cls):
            live = is_live(key, inherited)
            if shape in ("named", "indexed"):
                entries_follow(tp, live)
                found += 1
            elif shape == "section":
                found += visit(tp, live)
        return found

    assert visit(Settings, False) >= 3  # DownstreamApis, ClientCredentials, Kestrel endpoints


@pytest.mark.parametrize(
    ("group", "why"),
    [
        (("Broker__Listen", "Broker__OpsListen", "Kestrel", "ASPNETCORE_URLS"), "listeners collide-check"),
        (("Broker__Strict", "Broker__RequireHeader__Enabled"), "RequireHeader follows Strict"),
        (("Broker__Cache__MinRemainingSeconds", "Broker__Cache__StaleFloorSeconds",
          "Broker__Cache__BackoffBaseSeconds", "Broker__Cache__BackoffCapSeconds"), "cache settle checks"),
        (("AzureAd__SendX5C", "AzureAd__ClientCredentials"), "credential default"),
        (("Broker__ManagedIdentityEndpoint__Enabled", "Broker__ManagedIdentityEndpoint__Secret",
          "Broker__ManagedIdentityEndpoint__SecretFile"), "Enabled follows the secret keys"),
    ],
)  # fmt: skip
def test_keys_tied_by_a_check_share_their_mark(group: tuple[str, ...], why: str) -> None:
    marks = {path: live for path, live, _ in _walk(Settings)}
    assert len({marks[k] for k in group}) == 1, why


def test_restart_keys_are_the_identity_listeners_and_pools() -> None:
    marks = {path: live for path, live, _ in _walk(Settings)}
    for key in ("AzureAd__TenantId", "AzureAd__ClientId", "AzureAd__Instance", "AzureAd__ClientCredentials",
                "AzureAd__Audiences", "Broker__Listen", "Broker__OpsListen", "Broker__UnixSocketMode",
                "Broker__Cache__Redis", "Broker__Cache__MaxEntries", "Broker__Upstream__MaxConcurrency",
                "Broker__Downstream__MaxConnections", "Broker__Limits__MaxRequestLineBytes"):  # fmt: skip
        assert marks[key] is False, key
    for key in ("DownstreamApis", "Sidecar__AllowOverrides", "Broker__AllowedAgentIdentities",
                "Broker__AllowedAgentUsers", "Broker__AllowedCallers", "Broker__Strict",
                "Broker__Limits__CacheMissesPerSecond", "Broker__Limits__MaxConcurrentRequests",
                "Broker__Limits__RequestTimeoutSeconds", "Logging__LogLevel__Default", "AzureAd__Scopes",
                "Broker__ManagedIdentityEndpoint__DefaultAgentIdentity", "Broker__ConfigWatchSeconds",
                "Broker__ManagedIdentityEndpoint__AllowedResources", "AzureAd__Domain"):  # fmt: skip
        assert marks[key] is True, key


def test_the_docs_reload_column_is_the_mark() -> None:
    by_key = {row[1]: row[4] for row in rows(Settings)}
    assert by_key["`Broker__Listen`"] == "restart"
    assert by_key["`Broker__AllowedAgentIdentities`"] == "live"
    assert by_key["`DownstreamApis__<name>__Scopes`"] == "live"
    assert by_key["`AzureAd__ClientCredentials__N__ClientSecret`"] == "restart"
    assert set(by_key.values()) == {"live", "restart", ""}
