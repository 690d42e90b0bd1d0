"""``dev``'s configuration layering (sans-IO): the emulator wiring, the caller's own keys, defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent_token_broker.dev import DEFAULT_LISTEN, DEFAULT_OPS_LISTEN, MSI_SECRET_FILE, merged_environment
from agent_token_broker.settings import load_settings
from entra_emulator import demo


@dataclass
class FakeEmulatorAddress:  # only the addresses dev reads; no emulator runs in a unit test
    url: str = "https://127.0.0.1:4443"
    ca_path: Path = Path("/state/ca.pem")
    state_dir: Path = Path("/state")


def test_defaults_point_everything_at_the_emulator() -> None:
    env = merged_environment({"PATH": "/bin"}, FakeEmulatorAddress(), {})
    assert env["PATH"] == "/bin"
    assert env["AzureAd__Instance"] == "https://127.0.0.1:4443/"
    assert env["DownstreamApis__graph__BaseUrl"] == "https://127.0.0.1:4443" + demo.DEMO_GRAPH_PATH
    assert env["DownstreamApis__demo__BaseUrl"] == "https://127.0.0.1:4443" + demo.DEMO_API_PATH
    assert env["Broker__Listen"] == DEFAULT_LISTEN and env["Broker__OpsListen"] == DEFAULT_OPS_LISTEN
    assert env["Broker__ManagedIdentityEndpoint__SecretFile"] == f"/state/{MSI_SECRET_FILE}"
    settings = load_settings(env=env)
    assert settings.managed_identity_endpoint.enabled
    assert {c.source_type for c in settings.azure_ad.credentials} == {"Path", "ClientSecret"}


def test_the_callers_keys_win_except_azuread_in_any_case() -> None:
    environ = {
        "azuread__instance": "https://login.microsoftonline.com/",  # leftover: must not point dev elsewhere
        "AZUREAD__CLIENTCREDENTIALS__3__SOURCETYPE": "ClientSecret",
        "downstreamapis__GRAPH__baseurl": "https://example.test/v1/",
        "BROKER__LISTEN": "127.0.0.1:5001",
    }
    env = merged_environment(environ, FakeEmulatorAddress(), {"Broker__OpsListen": "off"})
    assert "azuread__instance" not in env and "AZUREAD__CLIENTCREDENTIALS__3__SOURCETYPE" not in env
    assert env["downstreamapis__GRAPH__baseurl"] == "https://example.test/v1/"
    assert "DownstreamApis__graph__BaseUrl" not in env
    assert "Broker__Listen" not in env and "Broker__OpsListen" not in env
    settings = load_settings(env=env, overrides={"Broker__OpsListen": "off"})
    assert settings.azure_ad.instance.startswith("https://127.0.0.1:4443")
    assert settings.listen[0].port == 5001 and settings.ops_listen is None


def test_msi_endpoint_left_alone_when_configured() -> None:
    env = merged_environment({}, FakeEmulatorAddress(), {"Broker__ManagedIdentityEndpoint__Enabled": "false"})
    assert not any(k.startswith("Broker__ManagedIdentityEndpoint") for k in env)
    env = merged_environment({"ASPNETCORE_URLS": "http://127.0.0.1:7000"}, FakeEmulatorAddress(), {})
    assert "Broker__Listen" not in env
