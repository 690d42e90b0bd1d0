"""The broker's MSAL HTTP client against a real local HTTP server: discovery documents are
kept (bounded), a borrowed session's trust stays its owner's."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import requests

from agent_token_broker.msal_http import DISCOVERY_MAX_DOCUMENTS, UpstreamHttp
from tests.support import JsonHandler, LocalHttpServer


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
