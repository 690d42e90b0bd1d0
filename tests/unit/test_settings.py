"""Configuration loading: sources, precedence, case-insensitivity, arrays, validation, redaction."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import pytest

from agent_token_broker.logs import setup_logging
from agent_token_broker.settings import (
    DEFAULT_SIGNED_ASSERTION_FILE,
    REDACTED,
    ConfigError,
    Listen,
    Secret,
    effective_config,
    load_settings,
)

TENANT = "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14"
CLIENT = "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58"
SECRET = "s3cr3t-Value-That-Must-Not-Leak"

BASE = {
    "AzureAd__TenantId": TENANT,
    "AzureAd__ClientId": CLIENT,
    "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
    "AzureAd__ClientCredentials__0__ClientSecret": SECRET,
}


def env(**extra: str) -> dict[str, str]:
    return {**BASE, **extra}


def problems_of(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_minimal_environment_gives_documented_defaults() -> None:
    s = load_settings(env=env())
    ad = s.azure_ad
    assert ad.instance == "https://login.microsoftonline.com/"
    assert ad.authority == f"https://login.microsoftonline.com/{TENANT}"
    assert ad.audiences == (CLIENT, f"api://{CLIENT}")
    assert ad.scopes == ()
    [cred] = ad.credentials
    assert (cred.index, cred.source_type, cred.client_secret) == (0, "ClientSecret", Secret(SECRET))
    assert s.listen == (Listen("tcp", "127.0.0.1", 5000),)
    assert s.ops_listen == Listen("tcp", "0.0.0.0", 9464)
    assert s.cache.min_remaining_seconds == 300 and s.cache.max_entries == 50000
    assert s.upstream.max_concurrency == 16
    assert s.log_level == "INFO" and s.strict is False
    assert dict(s.sidecar.allow_overrides) == {
        "GetAuthorizationHeader": True,
        "GetAuthorizationHeaderUnauthenticated": False,
        "CallDownstreamApi": True,
        "CallDownstreamApiUnauthenticated": False,
    }
    assert s.downstream_apis == {}


def test_precedence_json_then_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps(
            {
                "AzureAd": {"Instance": "https://json.example/", "Scopes": ["from-json"]},
                "Broker": {"Cache": {"MaxEntries": 11, "MaxAgentClients": 12, "NegativeTtlSeconds": 1.5}},
            }
        )
    )
    s = load_settings(
        env=env(Broker__Cache__MaxEntries="21", Broker__Cache__MaxAgentClients="22"),
        config_file=config,
        overrides={"Broker:Cache:MaxAgentClients": "33"},
    )
    assert s.azure_ad.instance == "https://json.example/"  # only in JSON
    assert s.azure_ad.scopes == ("from-json",)
    assert s.cache.negative_ttl_seconds == 1.5
    assert s.cache.max_entries == 21  # env beats JSON
    assert s.cache.max_agent_clients == 33  # overrides beat env


def test_keys_are_case_insensitive_and_colon_is_a_separator(tmp_path: Path) -> None:
    config = tmp_path / "appsettings.json"
    config.write_text(json.dumps({"azuread": {"tenantid": TENANT}}))
    s = load_settings(
        env={
            "AZUREAD__CLIENTID": CLIENT,
            "azuread:clientcredentials:0:sourcetype": "clientsecret",
            "AzureAd__ClientCredentials__0__CLIENTSECRET": SECRET,
            "downstreamapis__MyApi__SCOPES__0": "api://x/.default",
            "Broker__STRICT": "TRUE",
        },
        config_file=config,
    )
    assert s.azure_ad.tenant_id == TENANT
    assert s.azure_ad.credentials[0].source_type == "ClientSecret"
    assert s.strict is True
    assert s.downstream_apis["myapi"].scopes == ("api://x/.default",)
    assert s.downstream_apis["MYAPI"] is s.downstream_apis["MyApi"]
    assert list(s.downstream_apis) == ["MyApi"]


def test_arrays_from_env_json_and_merged_by_index(tmp_path: Path) -> None:
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps(
            {
                "AzureAd": {
                    "TenantId": TENANT,
                    "ClientId": CLIENT,
                    "ClientCredentials": [
                        {"SourceType": "SignedAssertionFromManagedIdentity"},
                        {"SourceType": "ClientSecret", "ClientSecret": SECRET},
                    ],
                },
                "DownstreamApis": {"Graph": {"Scopes": ["a", "b"], "RequestAppToken": True}},
            }
        )
    )
    s = load_settings(
        env={"DownstreamApis__Graph__Scopes__0": "c", "AzureAd__Scopes__0": "access"}, config_file=config
    )
    assert [c.source_type for c in s.azure_ad.credentials] == [
        "SignedAssertionFromManagedIdentity",
        "ClientSecret",
    ]
    assert s.downstream_apis["graph"].scopes == ("c", "b")  # env replaced index 0 only, as ASP.NET does
    assert s.downstream_apis["graph"].request_app_token is True
    assert s.azure_ad.scopes == ("access",)


def test_space_separated_scopes_string_is_split() -> None:
    s = load_settings(env=env(DownstreamApis__Api__Scopes="api://a/read api://a/write"))
    assert s.downstream_apis["api"].scopes == ("api://a/read", "api://a/write")


def test_credentials_sorted_numerically_by_index() -> None:
    s = load_settings(
        env={
            "AzureAd__TenantId": TENANT,
            "AzureAd__ClientId": CLIENT,
            "AzureAd__ClientCredentials__10__SourceType": "ClientSecret",
            "AzureAd__ClientCredentials__10__ClientSecret": SECRET,
            "AzureAd__ClientCredentials__2__SourceType": "SignedAssertionFilePath",
        }
    )
    assert [(c.index, c.source_type) for c in s.azure_ad.credentials] == [
        (2, "SignedAssertionFilePath"),
        (10, "ClientSecret"),
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"AzureAd__ClientId": ""}, "AzureAd__ClientId: required"),
        ({"AzureAd__ClientId": "not-a-guid"}, "AzureAd__ClientId: must be a GUID"),
        ({"AzureAd__TenantId": "common"}, "AzureAd__TenantId: 'common' is not supported by Agent ID"),
        ({"AzureAd__TenantId": "organizations"}, "AzureAd__TenantId: 'organizations' is not supported"),
        ({"AzureAd__TenantId": "bad tenant"}, "AzureAd__TenantId: must be a GUID or a domain name"),
        ({"AzureAd__Instance": "http://login.example/"}, "AzureAd__Instance: must be an https URL"),
        ({"AzureAd__Instance": "https://"}, "AzureAd__Instance: must include a host"),
        (
            {"AzureAd__ClientCredentials__0__SourceType": "KeyVault"},
            "AzureAd__ClientCredentials__0__SourceType: KeyVault is not supported by this broker; use Path",
        ),
        (
            {"AzureAd__ClientCredentials__0__SourceType": "storewiththumbprint"},
            "AzureAd__ClientCredentials__0__SourceType: StoreWithThumbprint is not supported by this broker; use Path",
        ),
        (
            {"AzureAd__ClientCredentials__0__SourceType": "StoreWithDistinguishedName"},
            "AzureAd__ClientCredentials__0__SourceType: StoreWithDistinguishedName is not supported",
        ),
        ({"AzureAd__ClientCredentials__0__SourceType": "Magic"}, "unknown source type 'Magic'"),
        (
            {"AzureAd__ClientCredentials__0__ClientSecret": ""},
            "AzureAd__ClientCredentials__0__ClientSecret: required when SourceType is ClientSecret",
        ),
        (
            {"AzureAd__ClientCredentials__1__SourceType": "Path"},
            "AzureAd__ClientCredentials__1__CertificateDiskPath: required when SourceType is Path",
        ),
        (
            {"AzureAd__ClientCredentials__1__CertificateDiskPath": "/x.pem"},
            "AzureAd__ClientCredentials__1__SourceType: required",
        ),
        (
            {
                "AzureAd__ClientCredentials__1__SourceType": "SignedAssertionFromManagedIdentity",
                "AzureAd__ClientCredentials__1__ManagedIdentityClientId": "nope",
            },
            "AzureAd__ClientCredentials__1__ManagedIdentityClientId: must be a GUID",
        ),
        ({"AzureAd__ClientCredentials__x__SourceType": "Path"}, "AzureAd__ClientCredentials__x: array index"),
        (
            {"AzureAd__ClientCredentials__0__Thumbprnt": "1"},
            "AzureAd__ClientCredentials__0__Thumbprnt: unknown key",
        ),
        ({"AzureAd__Bogus": "1"}, "AzureAd__Bogus: unknown key"),
        ({"Broker__Nope": "1"}, "Broker__Nope: unknown key"),
        ({"Broker__Cache__Nope": "1"}, "Broker__Cache__Nope: unknown key"),
        ({"Sidecar__AllowOverrides__Everything": "true"}, "Sidecar__AllowOverrides__Everything: unknown key"),
        ({"Kestrel__Limits__MaxBody": "1"}, "Kestrel__Limits: unknown key"),
        ({"Broker__Strict": "yes"}, "Broker__Strict: must be true or false, got 'yes'"),
        (
            {"Sidecar__AllowOverrides__CallDownstreamApi": "1"},
            "Sidecar__AllowOverrides__CallDownstreamApi: must be",
        ),
        ({"Broker__Cache__MaxEntries": "0"}, "Broker__Cache__MaxEntries: must be between 1 and"),
        ({"Broker__Cache__MaxEntries": "many"}, "Broker__Cache__MaxEntries: must be an integer"),
        ({"Broker__Cache__RefreshFraction": "1.5"}, "Broker__Cache__RefreshFraction: must be in (0, 1]"),
        ({"Broker__Cache__JitterFraction": "nan"}, "Broker__Cache__JitterFraction: must be in [0, 0.5]"),
        ({"Broker__Cache__StaleFloorSeconds": "400"}, "Broker__Cache__StaleFloorSeconds: must not exceed"),
        ({"Broker__Cache__BackoffCapSeconds": "0.5"}, "Broker__Cache__BackoffCapSeconds: must be at least"),
        (
            {"Broker__Cache__AdminSecret": "short"},
            "Broker__Cache__AdminSecret: must be at least 16 characters",
        ),
        (
            {"Broker__Upstream__ConnectTimeoutSeconds": "0"},
            "Broker__Upstream__ConnectTimeoutSeconds: must be in (0,",
        ),
        ({"Broker__Upstream__MaxConcurrency": "x"}, "Broker__Upstream__MaxConcurrency: must be an integer"),
        ({"Broker__Listen": "https://127.0.0.1:5000"}, "Broker__Listen: https listeners are not supported"),
        ({"Broker__Listen": "127.0.0.1"}, "Broker__Listen: missing port"),
        ({"Broker__OpsListen": "::1:9464"}, "Broker__OpsListen: IPv6 addresses must be in brackets"),
        ({"ASPNETCORE_URLS": "http://127.0.0.1:99999"}, "ASPNETCORE_URLS: invalid port"),
        ({"Logging__LogLevel__Default": "Loud"}, "Logging__LogLevel__Default: unknown level 'Loud'"),
        (
            {"DownstreamApis__A__BaseUrl": "http://api.example.com"},
            "DownstreamApis__A__BaseUrl: must be https",
        ),
        ({"DownstreamApis__A__BaseUrl": "https://u:p@api.example.com"}, "must not contain user information"),
        (
            {"DownstreamApis__A__BaseUrl": "ftp://api.example.com"},
            "DownstreamApis__A__BaseUrl: must be an https URL",
        ),
        ({"DownstreamApis__A__BaseUrl": "/relative"}, "DownstreamApis__A__BaseUrl: must be an absolute URL"),
        ({"DownstreamApis__A__HttpMethod": "FETCH"}, "DownstreamApis__A__HttpMethod: must be one of"),
        (
            {"DownstreamApis__A__RequestAppToken": "maybe"},
            "DownstreamApis__A__RequestAppToken: must be true or",
        ),
        ({"DownstreamApis__A__Unknown": "x"}, "DownstreamApis__A__Unknown: unknown key"),
        (
            {"DownstreamApis__A__AcquireTokenOptions__PopPublicKey": "x"},
            "DownstreamApis__A__AcquireTokenOptions__PopPublicKey: not supported",
        ),
        (
            {"DownstreamApis__A__AcquireTokenOptions__AuthenticationScheme": "PoP"},
            "DownstreamApis__A__AcquireTokenOptions__AuthenticationScheme: only Bearer",
        ),
    ],
)
def test_each_problem_is_one_line_naming_its_key(extra: dict[str, str], expected: str) -> None:
    problems = problems_of(env=env(**extra))
    assert any(expected in p for p in problems), problems
    for line in problems:
        assert "\n" not in line
        assert (": " in line and " " not in line.split(": ", 1)[0]) or line.startswith("--config")


def test_missing_everything_lists_all_problems_at_once() -> None:
    problems = problems_of(env={"Broker__Strict": "nope", "Broker__Cache__MaxEntries": "-1"})
    assert "AzureAd__TenantId: required" in problems
    assert "AzureAd__ClientId: required" in problems
    assert any(
        p.startswith("AzureAd__ClientCredentials: at least one credential is required") for p in problems
    )
    assert any(p.startswith("Broker__Strict:") for p in problems)
    assert any(p.startswith("Broker__Cache__MaxEntries:") for p in problems)
    assert str(ConfigError(problems)).count("\n") == len(problems)


def test_unrelated_environment_is_ignored_but_unknown_override_section_is_an_error() -> None:
    s = load_settings(env=env(PATH="/bin", HOME="/root", FOO__BAR="1", Logging__Console__Anything="x"))
    assert s.azure_ad.client_id == CLIENT
    problems = problems_of(env=env(), overrides={"Nope__Key": "1"})
    assert problems == [
        "Nope__Key: unknown key (command line); known sections are "
        "AzureAd, DownstreamApis, Sidecar, Broker, Logging, Kestrel and ASPNETCORE_URLS"
    ]


def test_json_unknown_top_level_section_is_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps({"AllowedHosts": "*", "AzureAd": {"Domain": "Contoso.com", "EnablePiiLogging": "true"}})
    )
    s = load_settings(env=env(), config_file=config)
    assert any(w.startswith("AllowedHosts: section ignored") for w in s.warnings)
    assert "AzureAd__EnablePiiLogging: ignored by this broker" in s.warnings
    # AzureAd__Domain (Microsoft.Identity.Web's tenant domain name) is read: a tenant override naming it is a no-op.
    assert s.azure_ad.domain == "contoso.com"


def test_config_file_problems_are_reported(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert problems_of(env=env(), config_file=missing) == [
        f"--config {missing}: cannot read file (No such file or directory)"
    ]
    broken = tmp_path / "broken.json"
    broken.write_text('{"AzureAd": {,}}')
    assert problems_of(env=env(), config_file=broken) == [
        f"--config {broken}: invalid JSON at line 1 column 14"
    ]


def test_secrets_never_appear_in_repr_effective_config_or_errors() -> None:
    password = "pfx-Password-Never-Shown"
    admin = "admin-Secret-Never-Shown-0123456789"
    s = load_settings(
        env=env(
            AzureAd__ClientCredentials__1__SourceType="Path",
            AzureAd__ClientCredentials__1__CertificateDiskPath="/certs/bp.pfx",
            AzureAd__ClientCredentials__1__CertificatePassword=password,
            Broker__Cache__AdminSecret=admin,
        )
    )
    texts = [repr(s), str(s), json.dumps(effective_config(s)), f"{s.azure_ad.credentials[0].client_secret}"]
    for text in texts:
        for secret in (SECRET, password, admin):
            assert secret not in text
    eff = effective_config(s)
    assert eff["AzureAd"]["ClientCredentials"][0]["ClientSecret"] == REDACTED
    assert eff["AzureAd"]["ClientCredentials"][1]["CertificatePassword"] == REDACTED
    assert eff["Broker"]["Cache"]["AdminSecret"] == REDACTED
    assert s.azure_ad.credentials[1].certificate_password is not None
    assert s.azure_ad.credentials[1].certificate_password.reveal() == password
    # Errors elsewhere, and misspelled secret keys, never echo secret values.
    with pytest.raises(ConfigError) as info:
        load_settings(
            env=env(
                AzureAd__TenantId="common",
                AzureAd__ClientCredentials__0__ClientSecrett=SECRET,
                Broker__Cache__AdminSecret=SECRET[:10],
            )
        )
    assert SECRET not in str(info.value) and SECRET[:10] not in str(info.value)
    assert "AzureAd__ClientCredentials__0__ClientSecrett: unknown key" in info.value.problems


def test_effective_config_shape() -> None:
    s = load_settings(env=env(DownstreamApis__Graph__Scopes__0="s", ASPNETCORE_URLS="http://127.0.0.1:5001"))
    eff = effective_config(s)
    assert json.loads(json.dumps(eff)) == eff
    assert eff["AzureAd"]["Authority"] == f"https://login.microsoftonline.com/{TENANT}"
    assert eff["DownstreamApis"]["Graph"]["Scopes"] == ["s"]
    assert eff["Broker"]["Listen"] == ["127.0.0.1:5001"]
    assert eff["Broker"]["OpsListen"] == "0.0.0.0:9464"
    assert eff["Logging"]["LogLevel"]["Default"] == "INFO"


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("Information", "INFO"),
        ("warning", "WARNING"),
        ("Error", "ERROR"),
        ("Debug", "DEBUG"),
        ("Trace", "DEBUG"),
        ("Critical", "CRITICAL"),
        ("None", "NONE"),
        ("INFO", "INFO"),
    ],
)
def test_log_levels_accept_microsoft_names(given: str, level: str) -> None:
    s = load_settings(
        env=env(Logging__LogLevel__Default=given, **{"Logging__LogLevel__Microsoft.AspNetCore": "Warning"})
    )
    assert s.log_level == level


def test_log_level_none_logs_nothing_and_critical_still_logs() -> None:
    """One level table (logs.LEVELS) for settings and logging: Microsoft's None silences even CRITICAL."""
    root, stream = logging.getLogger(), io.StringIO()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in ("msal", "urllib3", "aiohttp.access")})
    try:
        for given, expect_output in (("None", False), ("Critical", True)):
            setup_logging(load_settings(env=env(Logging__LogLevel__Default=given)).log_level, stream=stream)
            logging.getLogger("agent_token_broker.test").critical("level check %s", given)
            assert (f"level check {given}" in stream.getvalue()) is expect_output, stream.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def test_signed_assertion_path_default_aliases_and_federated_token_env() -> None:
    base = {
        "AzureAd__TenantId": "contoso.onmicrosoft.com",
        "AzureAd__ClientId": CLIENT,
        "AzureAd__ClientCredentials__0__SourceType": "SignedAssertionFilePath",
    }
    assert load_settings(env=base).azure_ad.credentials[0].signed_assertion_file_disk_path == (
        DEFAULT_SIGNED_ASSERTION_FILE
    )
    with_env = {**base, "AZURE_FEDERATED_TOKEN_FILE": "/var/run/wi/token"}
    assert (
        load_settings(env=with_env).azure_ad.credentials[0].signed_assertion_file_disk_path
        == "/var/run/wi/token"
    )
    for alias in ("SignedAssertionFileDiskPath", "SignedAssertionFilePath"):
        explicit = {**with_env, f"AzureAd__ClientCredentials__0__{alias}": "/t/token"}
        assert (
            load_settings(env=explicit).azure_ad.credentials[0].signed_assertion_file_disk_path == "/t/token"
        )


def test_credential_options_and_legacy_client_secret() -> None:
    s = load_settings(
        env={
            "AzureAd__TenantId": TENANT,
            "AzureAd__ClientId": CLIENT.upper(),
            "AzureAd__SendX5C": "true",
            "AzureAd__ClientCredentials__0__SourceType": "Path",
            "AzureAd__ClientCredentials__0__CertificateDiskPath": "/c/tls.crt",
            "AzureAd__ClientCredentials__0__PrivateKeyDiskPath": "/c/tls.key",
            "AzureAd__ClientCredentials__1__SourceType": "SignedAssertionFromManagedIdentity",
            "AzureAd__ClientCredentials__1__ManagedIdentityClientId": "D1D1D1D1-0001-4A2B-8C3D-4E5F6A7B8C91",
            "AzureAd__ClientCredentials__1__TokenExchangeUrl": "api://AzureADTokenExchangeUSGov",
            "AzureAd__ClientSecret": SECRET,
        }
    )
    path, mi, legacy = s.azure_ad.credentials
    assert s.azure_ad.client_id == CLIENT
    assert (path.certificate_disk_path, path.private_key_disk_path, path.send_x5c) == (
        "/c/tls.crt",
        "/c/tls.key",
        True,
    )
    assert mi.managed_identity_client_id == "d1d1d1d1-0001-4a2b-8c3d-4e5f6a7b8c91"
    assert mi.token_exchange_url == "api://AzureADTokenExchangeUSGov"
    assert (legacy.index, legacy.source_type, legacy.client_secret) == (2, "ClientSecret", Secret(SECRET))


def test_audience_overrides_default_and_sidecar_switches() -> None:
    s = load_settings(
        env=env(
            AzureAd__Audience="api://my-broker",
            Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated="True",
            Sidecar__AllowOverrides__GetAuthorizationHeader="FALSE",
            Sidecar__AllowOutboundRedirects="true",
        )
    )
    assert s.azure_ad.audiences == ("api://my-broker",)
    assert s.sidecar.allow_overrides["GetAuthorizationHeaderUnauthenticated"] is True
    assert s.sidecar.allow_overrides["getauthorizationheader"] is False
    assert s.sidecar.allow_outbound_redirects is True


def test_downstream_api_fields_and_loopback_http() -> None:
    s = load_settings(
        env=env(
            DownstreamApis__Local__BaseUrl="http://127.0.0.1:8081/api",
            DownstreamApis__Local__RelativePath="items",
            DownstreamApis__Local__HttpMethod="post",
            DownstreamApis__Local__AcceptHeader="application/json",
            DownstreamApis__Local__ContentType="text/plain",
            DownstreamApis__Local__AcquireTokenOptions__Tenant="c0ffee00-1234-4abc-8def-0123456789ab",
            DownstreamApis__Local2__BaseUrl="http://localhost/",
            DownstreamApis__Local3__BaseUrl="http://[::1]:1/",
        )
    )
    api = s.downstream_apis["local"]
    assert (api.base_url, api.relative_path, api.http_method) == (
        "http://127.0.0.1:8081/api",
        "items",
        "POST",
    )
    assert (api.accept_header, api.content_type, api.tenant) == (
        "application/json",
        "text/plain",
        "c0ffee00-1234-4abc-8def-0123456789ab",
    )
    assert set(s.downstream_apis) == {"Local", "Local2", "Local3"}


def test_cache_and_upstream_keys() -> None:
    s = load_settings(
        env=env(
            Broker__Cache__MinRemainingSeconds="120",
            Broker__Cache__StaleFloorSeconds="30",
            Broker__Cache__RefreshFraction="0.75",
            Broker__Cache__JitterFraction="0",
            Broker__Cache__StaleWaitSeconds="0.5",
            Broker__Cache__BackoffBaseSeconds="0.25",
            Broker__Cache__BackoffCapSeconds="30",
            Broker__Cache__RetryAfterCapSeconds="60",
            Broker__Cache__ForceRefreshMinIntervalSeconds="0",
            Broker__Upstream__MaxConcurrency="4",
            Broker__Upstream__ConnectTimeoutSeconds="1.5",
            Broker__Upstream__ReadTimeoutSeconds="20",
        )
    )
    c = s.cache
    assert (c.min_remaining_seconds, c.stale_floor_seconds, c.refresh_fraction, c.jitter_fraction) == (
        120,
        30,
        0.75,
        0,
    )
    assert (c.stale_wait_seconds, c.backoff_base_seconds, c.backoff_cap_seconds) == (0.5, 0.25, 30)
    assert (c.retry_after_cap_seconds, c.force_refresh_min_interval_seconds) == (60, 0)
    assert (
        s.upstream.max_concurrency,
        s.upstream.connect_timeout_seconds,
        s.upstream.read_timeout_seconds,
    ) == (
        4,
        1.5,
        20,
    )


def test_check_config_shows_the_redis_section_without_the_url_password(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(base64.b64encode(bytes(range(32))).decode())
    s = load_settings(
        env=env(
            Broker__Cache__Redis__Url="rediss://cache-user:hunter2-redis-pass@redis.example:6380/0",
            Broker__Cache__Redis__EncryptionKeyFile=str(key_file),
        )
    )
    redis = effective_config(s)["Broker"]["Cache"]["Redis"]
    assert redis["Url"] == "rediss://<redacted>@redis.example:6380/0"
    assert redis["EncryptionKeyFile"] == [str(key_file)]
    assert "hunter2-redis-pass" not in json.dumps(effective_config(s)) and "cache-user" not in json.dumps(effective_config(s))
    assert effective_config(load_settings(env=env()))["Broker"]["Cache"]["Redis"] is None
