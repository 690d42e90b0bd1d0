"""The broker's MSAL HTTP client against a real local HTTP server: discovery documents are
kept (bounded), a borrowed session's trust stays its owner's."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from agent_token_broker.msal_http import DISCOVERY_MAX_DOCUMENTS, UpstreamHttp


class Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Counting

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = b'{"issuer": "x"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[Counting]:
    srv = Counting()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_discovery_documents_are_fetched_once_and_the_cache_is_bounded(server: Counting) -> None:
    http = UpstreamHttp(connect_timeout=2, read_timeout=2)
    first = f"{server.url}/t0/v2.0/.well-known/openid-configuration"
    assert http.get(first).json() == {"issuer": "x"}
    assert http.get(first).json() == {"issuer": "x"}
    assert server.paths == ["/t0/v2.0/.well-known/openid-configuration"]
    for i in range(1, DISCOVERY_MAX_DOCUMENTS + 1):  # one tenant more than the cache holds
        http.get(f"{server.url}/t{i}/v2.0/.well-known/openid-configuration")
    http.get(first)  # the least recently used document was dropped: fetched again
    assert server.paths.count("/t0/v2.0/.well-known/openid-configuration") == 2
    http.close()


def test_a_borrowed_session_keeps_its_owners_trust() -> None:
    http = UpstreamHttp(session=requests.Session(), cache_discovery=False)
    with pytest.raises(RuntimeError, match="owner"):
        http.use_ssl_context(ssl.create_default_context())
