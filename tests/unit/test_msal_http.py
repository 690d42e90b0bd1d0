"""The broker's MSAL HTTP client against a real local HTTP server: discovery documents are
kept (bounded), a borrowed session's trust stays its owner's."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest
import requests

from agent_token_broker.msal_http import DISCOVERY_MAX_DOCUMENTS, UpstreamHttp, call_state
from tests.support import JsonHandler, LocalHttpServer, free_port


class Authority(LocalHttpServer):
    def __init__(self) -> None:
        super().__init__(MetadataHandler)
        self.paths: list[str] = []


class MetadataHandler(JsonHandler):
    server: Authority

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.send_json(200, '{"issuer": "x"}')


@pytest.fixture
def authority() -> Iterator[Authority]:
    with Authority().running() as server:
        yield server


def test_discovery_documents_are_fetched_once_and_the_cache_is_bounded(authority: Authority) -> None:
    http = UpstreamHttp(connect_timeout=2, read_timeout=2)
    first = f"{authority.url}/t0/v2.0/.well-known/openid-configuration"
    assert http.get(first).json() == {"issuer": "x"}
    assert http.get(first).json() == {"issuer": "x"}
    assert authority.paths == ["/t0/v2.0/.well-known/openid-configuration"]
    for i in range(1, DISCOVERY_MAX_DOCUMENTS + 1):  # one tenant more than the cache holds
        http.get(f"{authority.url}/t{i}/v2.0/.well-known/openid-configuration")
    http.get(first)  # the least recently used document was dropped: fetched again
    assert authority.paths.count("/t0/v2.0/.well-known/openid-configuration") == 2
    http.close()


def test_a_borrowed_session_keeps_its_owners_trust() -> None:
    http = UpstreamHttp(session=requests.Session(), cache_discovery=False)
    with pytest.raises(RuntimeError, match="owner"):
        http.use_ssl_context(ssl.create_default_context())


class TokenHandler(JsonHandler):
    server: TokenEndpoint

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.posts.append((self.path, dict(self.headers), self.rfile.read(length).decode()))
        if self.server.delay:
            time.sleep(self.server.delay)
        data = b'{"error": "temporarily_unavailable"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "7")
        self.send_header("client-request-id", "answered-id")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the timed-out client left
            self.wfile.write(data)


class TokenEndpoint(LocalHttpServer):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(TokenHandler)
        self.posts: list[tuple[str, dict[str, str], str]] = []
        self.delay = delay


def test_a_token_post_goes_through_the_pool_and_records_what_msal_loses() -> None:
    """The token POST skips requests' session layer (same pool): form body, headers and query as
    MSAL gave them, the status, Retry-After and correlation id recorded for the calling thread."""
    with TokenEndpoint().running() as server:
        http = UpstreamHttp(connect_timeout=2, read_timeout=2)
        state = call_state()
        state.reset(correlation_id="my-correlation")
        resp = http.post(
            f"{server.url}/tenant/oauth2/v2.0/token",
            params={"dc": "x y"},
            data={"grant_type": "client_credentials", "scope": "api://a/.default b", "client_assertion": "e.y.J"},
            headers={"Accept": "application/json", "x-client-sku": "MSAL.Python"},
        )
        assert resp.status_code == 503 and resp.json() == {"error": "temporarily_unavailable"}
        assert resp.headers["retry-after"] == "7"  # case-insensitive, as MSAL reads them
        with pytest.raises(requests.HTTPError):
            resp.raise_for_status()
        assert (state.status, state.retry_after, state.response_correlation_id) == (503, 7.0, "answered-id")
        path, headers, body = server.posts[0]
        assert path == "/tenant/oauth2/v2.0/token?dc=x+y"
        assert headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert headers["client-request-id"] == "my-correlation" and headers["x-client-sku"] == "MSAL.Python"
        assert parse_qs(body) == {
            "grant_type": ["client_credentials"], "scope": ["api://a/.default b"], "client_assertion": ["e.y.J"]
        }  # fmt: skip
        http.close()


def test_a_token_post_fails_with_requests_exception_types() -> None:
    """What the Entra legs classify (entra/errors.py): a read timeout is requests.Timeout, a refused
    connection requests.ConnectionError; neither message carries the request."""
    with TokenEndpoint(delay=1.0).running() as server:
        http = UpstreamHttp(connect_timeout=1, read_timeout=0.2)
        with pytest.raises(requests.Timeout) as timeout:
            http.post(f"{server.url}/t/token", data={"client_secret": "s3cret"})
        assert "s3cret" not in str(timeout.value)
        http.close()
    http = UpstreamHttp(connect_timeout=1, read_timeout=1)
    with pytest.raises(requests.ConnectionError) as refused:
        http.post(f"http://127.0.0.1:{free_port()}/t/token", data={"client_secret": "s3cret"})
    assert "s3cret" not in str(refused.value)
    http.close()
