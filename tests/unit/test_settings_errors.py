"""Configuration errors caught at load time: file encodings and JSON tolerance as ASP.NET Core's JSON
provider has them, credential keys their SourceType does not use, unreachable API names, listeners
that collide. Each problem is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_token_broker.settings import ConfigError, Listen, load_settings

TENANT = "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14"
CLIENT = "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58"
CRED = "AzureAd__ClientCredentials__0__"
BASE = {
    "AzureAd__TenantId": TENANT,
    "AzureAd__ClientId": CLIENT,
    CRED + "SourceType": "ClientSecret",
    CRED + "ClientSecret": "s3cr3t-Value-That-Must-Not-Leak",
}
JSONC = """// appsettings.json as Visual Studio writes it
{
  /* the blueprint */
  "AzureAd": {
    "TenantId": "TENANT", // the tenant
    "ClientId": "CLIENT",
    "Scopes": ["a", "b",],
  },
  "Broker": { "Cache": { "MaxEntries": 7, }, "Listen": "127.0.0.1:5001" /* trailing */ },
}
""".replace("TENANT", TENANT).replace("CLIENT", CLIENT)


def problems(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be-bom", "utf-32"])
def test_config_file_encodings_comments_and_trailing_commas(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "appsettings.json"
    if encoding == "utf-16-be-bom":
        path.write_bytes(b"\xfe\xff" + JSONC.encode("utf-16-be"))
    else:
        path.write_bytes(JSONC.encode(encoding))  # Python's utf-16/utf-32 codecs write a BOM
    env = {k: v for k, v in BASE.items() if not k.startswith("AzureAd__T") and k != "AzureAd__ClientId"}
    s = load_settings(env=env, config_file=path)
    assert (s.azure_ad.tenant_id, s.azure_ad.scopes, s.cache.max_entries) == (TENANT, ("a", "b"), 7)
    assert s.listen == (Listen("tcp", "127.0.0.1", 5001),)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"AzureAd": {"ClientId": "\xff"}}', "not valid UTF-8 text (byte 26); save it as UTF-8, or as UTF-16 with a byte-order mark"),
        ('{"Broker": {}}'.encode("utf-16-le"), "not valid UTF-8 text (NUL at byte 1); save it as UTF-8, or as UTF-16"),
        (b"\xff\xfe" + b"{\x00\x00\xd8", "not valid UTF-16-LE text"),
        (b'{"AzureAd": {,}}', "invalid JSON at line 1 column 14"),
        (b'{"Broker": {"Strict": true,,}}', "invalid JSON at line 1 column 28"),
        (b'{"Broker": {"Cache": {"MaxEntries": NaN}}}', "NaN is not valid JSON"),
        (b'{"Broker": {} /* open', "unterminated /* comment"),
        (b'{"Broker": {"Strict": true, "strict": false}}', "Broker__strict is given twice"),
        (b'{"Broker": {"Cache": {"MaxEntries": 1}, "Cache:MaxEntries": 2}}', "Broker__Cache__MaxEntries is given twice"),
        (b"[1, 2]", "the top level must be a JSON object"),
    ],
)
def test_config_file_problems_are_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "appsettings.json"
    path.write_bytes(content)
    found = problems(env=BASE, config_file=path)
    assert any(p.startswith(f"--config {path}: ") and expected in p for p in found), found
    assert all("\n" not in p for p in found)


def test_comment_markers_inside_strings_are_text(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text('{"DownstreamApis": {"A": {"RelativePath": "x//y/*z*/,]", "BaseUrl": "https://a.example"}}}')
    assert load_settings(env=BASE, config_file=path).downstream_apis["a"].relative_path == "x//y/*z*/,]"


@pytest.mark.parametrize(
    ("source", "extra", "key"),
    [
        ("ClientSecret", {"CertificateDiskPath": "/c.pem"}, "CertificateDiskPath"),
        ("ClientSecret", {"SendX5C": "true"}, "SendX5C"),
        ("Path", {"CertificateDiskPath": "/c.pem", "ClientSecret": "x"}, "ClientSecret"),
        ("Path", {"CertificateDiskPath": "/c.pem", "ManagedIdentityClientId": CLIENT}, "ManagedIdentityClientId"),
        ("SignedAssertionFilePath", {"CertificatePassword": "pw"}, "CertificatePassword"),
        ("SignedAssertionFromManagedIdentity", {"SignedAssertionFilePath": "/t"}, "SignedAssertionFileDiskPath"),
        ("SignedAssertionFromManagedIdentity", {"PrivateKeyDiskPath": "/k.pem"}, "PrivateKeyDiskPath"),
    ],
)
def test_credential_keys_their_source_type_does_not_use_are_errors(source: str, extra: dict[str, str], key: str) -> None:
    env = {**BASE, CRED + "SourceType": source, **{CRED + k: v for k, v in extra.items()}}
    if source != "ClientSecret" and "ClientSecret" not in extra:
        del env[CRED + "ClientSecret"]
    found = problems(env=env)
    assert f"{CRED}{key}: not used with SourceType {source}" in "\n".join(found), found
    assert "pw" not in "\n".join(found) and "s3cr3t" not in "\n".join(found)


def test_consistent_credentials_and_inherited_send_x5c_pass() -> None:
    s = load_settings(env={**BASE, "AzureAd__SendX5C": "true"})
    assert s.azure_ad.credentials[0].send_x5c is True  # inherited, not given: no contradiction


@pytest.mark.parametrize("name", ["My Api", "a/b", "..", "caf\u00e9", "a?b"])
def test_api_names_no_route_can_reach_are_errors(tmp_path: Path, name: str) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text('{"DownstreamApis": {"NAME": {"Scopes": "s"}}}'.replace("NAME", name), encoding="utf-8")
    found = problems(env=BASE, config_file=path)
    assert any(p.startswith(f"DownstreamApis__{name}: an API name is a URL path segment") for p in found), found


def test_api_names_with_url_safe_characters_pass() -> None:
    s = load_settings(env={**BASE, "DownstreamApis__my-api_v2.0~x__Scopes": "s"})
    assert list(s.downstream_apis) == ["my-api_v2.0~x"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"Broker__Listen": "127.0.0.1:9464"}, "Broker__OpsListen: 0.0.0.0:9464 collides with the API listener (Broker__Listen)"),
        ({"Broker__Listen": "127.0.0.1:7000", "Broker__OpsListen": "localhost:7000"}, "Broker__OpsListen: localhost:7000 collides"),
        ({"Broker__Listen": "unix:/run/b.sock", "Broker__OpsListen": "unix:/run/b.sock"}, "Broker__OpsListen: unix:/run/b.sock collides"),
        ({"ASPNETCORE_URLS": "http://[::]:7001", "Broker__OpsListen": "127.0.0.1:7001"}, "(ASPNETCORE_URLS)"),
        ({"Broker__Listen": "127.0.0.1:7002;http://127.0.0.1:7002"}, "Broker__Listen: 127.0.0.1:7002 is given twice"),
        ({"Kestrel__Endpoints__A__Url": "http://+:7003", "Kestrel__Endpoints__B__Url": "127.0.0.1:7003"}, "Kestrel__Endpoints: 127.0.0.1:7003 is given twice"),
    ],
)
def test_colliding_listeners_are_errors(extra: dict[str, str], expected: str) -> None:
    found = problems(env={**BASE, **extra})
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    "extra",
    [
        {"Broker__Listen": "127.0.0.1:0", "Broker__OpsListen": "127.0.0.1:0"},  # port 0: any free port
        {"Broker__Listen": "[::1]:7004", "Broker__OpsListen": "0.0.0.0:7004"},  # IPv4 wildcard, IPv6 loopback
        {"Broker__Listen": "127.0.0.1:7005", "Broker__OpsListen": "127.0.0.2:7005"},
    ],
)
def test_listeners_that_can_coexist_pass(extra: dict[str, str]) -> None:
    load_settings(env={**BASE, **extra})
