"""The API listener's guards, one named function each (the front calls them in order; see
docs/security.md, "Guard order"), and what a connection decides once."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.test_utils import make_mocked_request

from agent_token_broker.api.guards import (
    caller_allowed,
    check_host,
    check_path,
    check_required_header,
    check_signals,
    check_sizes,
    check_version,
    host_allowed,
    parse_peer_ip,
    unix_peer,
)
from agent_token_broker.api.limits import InFlight
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.api.protocol import Connection
from agent_token_broker.settings.security import LimitsConfig, RequireHeaderConfig

LIMITS = LimitsConfig()


def refused(fn: object, *args: object) -> ProblemError:
    with pytest.raises(ProblemError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


def test_http_09_is_refused_and_10_11_pass() -> None:
    assert refused(check_version, make_mocked_request("GET", "/", version=HttpVersion(0, 9))).slug == "bad-http"
    for version in (HttpVersion10, HttpVersion11):
        check_version(make_mocked_request("GET", "/", version=version))


@pytest.mark.parametrize(
    "path",
    ["/a//b", "//a", "/a/./b", "/a/../b", "/a/", "/a%2fb", "/a\\b", "http://x/a", "*", "/a/b#f", "/a\x00"],
)
def test_unnormalised_paths_are_refused(path: str) -> None:
    assert refused(check_path, path).slug == "bad-path"


def test_api_names_are_checked_only_when_given() -> None:
    check_path("/AuthorizationHeader/graph", "graph")
    check_path("/AuthorizationHeader/graph.")  # no route matched: no API name to check
    assert refused(check_path, "/AuthorizationHeader/graph.", "graph.").slug == "bad-api-name"
    assert refused(check_path, "/AuthorizationHeader/" + "a" * 65, "a" * 65).slug == "bad-api-name"
    check_path("/", None)


def test_sizes_query_headers_and_body() -> None:
    ok = make_mocked_request("GET", "/Validate?x=1", headers={"Host": "localhost"})
    assert check_sizes(ok, LIMITS) is False
    long_query = make_mocked_request("GET", "/v?" + "a" * (LIMITS.max_query_bytes + 1))
    assert refused(check_sizes, long_query, LIMITS).status == 414
    many = make_mocked_request("GET", "/v", headers={f"X-{i}": "1" for i in range(LIMITS.max_headers + 1)})
    assert refused(check_sizes, many, LIMITS).status == 431
    big = make_mocked_request("GET", "/v", headers={"X-Big": "a" * LIMITS.max_total_header_bytes})
    assert refused(check_sizes, big, LIMITS).status == 431
    get_body = make_mocked_request("GET", "/v", headers={"Content-Length": "5"})
    assert refused(check_sizes, get_body, LIMITS).slug == "body-too-large"
    chunked = make_mocked_request("GET", "/v", headers={"Transfer-Encoding": "chunked"})
    assert refused(check_sizes, chunked, LIMITS).status == 413
    post = make_mocked_request("POST", "/v", headers={"Content-Length": str(LIMITS.max_body_bytes + 1)})
    assert refused(check_sizes, post, LIMITS).status == 413
    check_sizes(make_mocked_request("POST", "/v", headers={"Content-Length": "10"}), LIMITS)


def test_the_size_pass_flags_proxy_and_browser_headers_for_the_signal_check() -> None:
    for name in ("Forwarded", "x-forwarded-for", "X-Real-IP", "Origin", "Sec-Fetch-Site", "Transfer-Encoding"):
        request = make_mocked_request("POST", "/v", headers={name: "chunked"})
        assert check_sizes(request, LIMITS) is True, name


@pytest.mark.parametrize(
    ("headers", "slug"),
    [
        ({"X-Forwarded-For": "1.2.3.4"}, "proxied-request"),
        ({"Forwarded": "for=x"}, "proxied-request"),
        ({"Origin": "null"}, "browser-request"),
        ({"Sec-Fetch-Site": "cross-site"}, "browser-request"),
        ({"Sec-Fetch-Mode": "cors"}, "browser-request"),
        ({"Sec-Fetch-Dest": "script"}, "browser-request"),
    ],
)
def test_proxy_and_browser_signals_are_refused(headers: dict[str, str], slug: str) -> None:
    request = make_mocked_request("GET", "/v", headers=headers)
    assert refused(check_signals, request.headers).slug == slug


def test_an_address_bar_visit_is_not_a_browser_request() -> None:
    headers = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    check_signals(make_mocked_request("GET", "/v", headers=headers).headers)


def test_host_names_loopback_the_local_address_or_an_allowed_host() -> None:
    for raw in ("localhost", "LOCALHOST:5000", "127.0.0.1", "127.9.9.9:80", "[::1]:5000", "localhost."):
        assert host_allowed(raw, "127.0.0.1", ()), raw
    assert host_allowed("10.0.0.5:5000", "10.0.0.5", ())
    assert not host_allowed("10.0.0.6", "10.0.0.5", ())
    assert host_allowed("broker.svc:5000", None, ("broker.svc",))
    assert not host_allowed("evil.example", None, ("broker.svc",))
    assert host_allowed("evil.example", None, ("*",))
    assert not host_allowed("localhost:http", None, ())
    assert not host_allowed("[::1", None, ())
    assert refused(check_host, "evil.example", None, ()).slug == "host-not-allowed"
    assert refused(check_host, None, None, ("*",)).slug == "missing-host"


def test_required_header_is_exact_and_constant_time_compared() -> None:
    required = RequireHeaderConfig(enabled=True, name="X-Token-Broker-Request", value="true")
    check_required_header(make_mocked_request("GET", "/", headers={"X-Token-Broker-Request": " true "}).headers, required)
    for bad in ({}, {"X-Token-Broker-Request": "TRUE"}, {"X-Token-Broker-Request": "true1"}):
        err = refused(check_required_header, make_mocked_request("GET", "/", headers=bad).headers, required)
        assert err.slug == "missing-required-header" and err.config_key == "Broker__RequireHeader__Enabled"
    check_required_header(make_mocked_request("GET", "/").headers, RequireHeaderConfig())


def test_callers_loopback_and_allowed_networks() -> None:
    net = (ipaddress.ip_network("10.1.0.0/16"),)
    assert caller_allowed(parse_peer_ip("127.0.0.1"), ())
    assert caller_allowed(parse_peer_ip("::1"), ())
    assert caller_allowed(parse_peer_ip("::ffff:127.0.0.1"), ())  # IPv4-mapped, unwrapped
    assert not caller_allowed(parse_peer_ip("10.2.0.1"), net)
    assert caller_allowed(parse_peer_ip("10.1.2.3"), net)
    assert caller_allowed(parse_peer_ip("fe80::1%eth0"), (ipaddress.ip_network("fe80::/64"),))
    assert not caller_allowed(parse_peer_ip("not-an-ip"), net)


class _Transport:
    def __init__(self, **extra: object) -> None:
        self.extra = extra

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.extra.get(name, default)


def test_a_connection_decides_its_caller_once_per_settings() -> None:
    conn = Connection(_Transport(peername=("::ffff:10.1.2.3", 5, 0, 0), sockname=("::ffff:10.0.0.1", 80, 0, 0)))  # type: ignore[arg-type]
    assert conn.caller == "10.1.2.3" and conn.unix is None and conn.local == "::ffff:10.0.0.1"
    first, second = object(), object()
    assert not conn.allowed(first, ())
    assert not conn.allowed(first, (ipaddress.ip_network("10.1.0.0/16"),))  # remembered for `first`
    assert conn.allowed(second, (ipaddress.ip_network("10.1.0.0/16"),))  # new settings: decided again
    assert Connection(_Transport()).caller == "unknown"  # type: ignore[arg-type]


def test_unix_socket_peers_are_named_by_uid() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        import os

        assert unix_peer(a) == f"uid:{os.getuid()}"
        conn = Connection(_Transport(socket=a))  # type: ignore[arg-type]
        assert conn.caller == f"uid:{os.getuid()}" and conn.allowed(object(), ())
    finally:
        a.close()
        b.close()
    tcp = socket.socket()
    try:
        assert unix_peer(tcp) is None
    finally:
        tcp.close()


def test_in_flight_check_refuses_as_enter_would_and_counts_nothing() -> None:
    flight = InFlight(LimitsConfig(max_concurrent_requests=3, max_concurrent_requests_per_caller=2))
    flight.check("a")
    flight.enter("a")
    flight.enter("a")
    assert refused(flight.check, "a").status == 429
    assert refused(flight.enter, "a").status == 429
    flight.check("b")
    flight.enter("b")
    assert refused(flight.check, "c").status == 503
    flight.leave("a")
    flight.check("c")
    flight.leave("a")
    flight.leave("b")
    for _ in range(10):
        flight.check("a")  # checking never fills the caps
