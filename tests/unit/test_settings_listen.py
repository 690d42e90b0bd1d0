"""Listener addresses: parsing and the Broker__Listen > Kestrel > ASPNETCORE_URLS precedence."""

from __future__ import annotations

import pytest

from agent_token_broker.settings import Listen, ListenError, load_settings, parse_listen

BASE = {
    "AzureAd__TenantId": "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14",
    "AzureAd__ClientId": "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58",
    "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
    "AzureAd__ClientCredentials__0__ClientSecret": "x",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", Listen("tcp", "127.0.0.1", 5000)),
        ("[::1]:5000", Listen("tcp", "::1", 5000)),
        ("localhost:8080", Listen("tcp", "localhost", 8080)),
        ("http://127.0.0.1:5000", Listen("tcp", "127.0.0.1", 5000)),
        ("HTTP://[::1]:5001/", Listen("tcp", "::1", 5001)),
        ("http://localhost", Listen("tcp", "localhost", 80)),
        ("0.0.0.0:0", Listen("tcp", "0.0.0.0", 0)),
        ("unix:/run/broker.sock", Listen("unix", path="/run/broker.sock")),
        ("http://unix:/tmp/kestrel.sock", Listen("unix", path="/tmp/kestrel.sock")),
    ],
)
def test_parse_listen_forms(text: str, expected: Listen) -> None:
    listen, warning = parse_listen(text)
    assert listen == expected
    assert warning is None


@pytest.mark.parametrize("text", ["http://+:5000", "http://*:5000"])
def test_wildcard_hosts_bind_all_ipv4_with_a_warning(text: str) -> None:
    listen, warning = parse_listen(text)
    assert listen == Listen("tcp", "0.0.0.0", 5000)
    assert warning is not None and "0.0.0.0" in warning


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://127.0.0.1:5000", "https listeners are not supported"),
        ("ftp://127.0.0.1:5000", "unsupported scheme"),
        ("127.0.0.1", "missing port"),
        ("127.0.0.1:http", "invalid port"),
        ("127.0.0.1:65536", "invalid port"),
        ("::1:5000", "IPv6 addresses must be in brackets"),
        ("[::1:5000", "unbalanced"),
        (":5000", "missing host"),
        ("unix:relative.sock", "must be absolute"),
        ("http://user@127.0.0.1:1", "user information"),
        ("bad_host!:1", "invalid host"),
    ],
)
def test_parse_listen_rejects(text: str, message: str) -> None:
    with pytest.raises(ListenError, match=message):
        parse_listen(text)


def test_aspnetcore_urls_list_takes_every_entry() -> None:
    s = load_settings(
        env={**BASE, "ASPNETCORE_URLS": "http://127.0.0.1:5000;http://[::1]:5000; unix:/run/b.sock;"}
    )
    assert s.listen == (
        Listen("tcp", "127.0.0.1", 5000),
        Listen("tcp", "::1", 5000),
        Listen("unix", path="/run/b.sock"),
    )


def test_wildcard_warning_reaches_settings() -> None:
    s = load_settings(env={**BASE, "ASPNETCORE_URLS": "http://+:5000"})
    assert s.listen == (Listen("tcp", "0.0.0.0", 5000),)
    assert any(
        w.startswith("ASPNETCORE_URLS: 'http://+:5000' listens on all IPv4 interfaces") for w in s.warnings
    )


def test_listen_precedence_broker_then_kestrel_then_urls() -> None:
    urls = {**BASE, "ASPNETCORE_URLS": "http://127.0.0.1:1"}
    kestrel = {**urls, "Kestrel__Endpoints__Http__Url": "http://127.0.0.1:2"}
    broker = {**kestrel, "Broker__Listen": "127.0.0.1:3;unix:/run/x.sock"}
    assert load_settings(env=urls).listen == (Listen("tcp", "127.0.0.1", 1),)
    assert load_settings(env=kestrel).listen == (Listen("tcp", "127.0.0.1", 2),)
    assert load_settings(env=broker).listen == (
        Listen("tcp", "127.0.0.1", 3),
        Listen("unix", path="/run/x.sock"),
    )
    array = {**BASE, "Broker__Listen__0": "127.0.0.1:4", "Broker__Listen__1": "[::1]:4"}
    assert load_settings(env=array).listen == (Listen("tcp", "127.0.0.1", 4), Listen("tcp", "::1", 4))


@pytest.mark.parametrize("value", ["off", "", "OFF", "none"])
def test_ops_listener_can_be_disabled(value: str) -> None:
    assert load_settings(env={**BASE, "Broker__OpsListen": value}).ops_listen is None


def test_ops_listener_address() -> None:
    s = load_settings(env={**BASE, "Broker__OpsListen": "127.0.0.1:9000"})
    assert s.ops_listen == Listen("tcp", "127.0.0.1", 9000)
    assert str(s.ops_listen) == "127.0.0.1:9000"
    assert str(Listen("tcp", "::1", 1)) == "[::1]:1"
    assert str(Listen("unix", path="/s")) == "unix:/s"
