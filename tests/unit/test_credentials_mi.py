"""Managed-identity source: our MSAL wiring against a tiny real IMDS-protocol server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from agent_token_broker.credentials import CredentialError, ManagedIdentitySource, build_sources
from agent_token_broker.msal_http import call_state
from agent_token_broker.settings import AzureAdConfig, CredentialConfig
from tests.support import JsonHandler, LocalHttpServer

MI_CLIENT_ID = "d1d1d1d1-0001-4a2b-8c3d-4e5f6a7b8c91"
EXCHANGE = "api://AzureADTokenExchange"


class FakeImds(LocalHttpServer):
    def __init__(self) -> None:
        super().__init__(ImdsHandler)
        self.requests: list[dict[str, Any]] = []
        self.reply: tuple[int, str] | None = None  # override: (status, body)


class ImdsHandler(JsonHandler):
    server: FakeImds

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.requests.append(
            {
                "path": parts.path,
                "query": query,
                "metadata": self.headers.get("Metadata"),
                "client_request_id": self.headers.get("client-request-id"),
            }
        )
        if self.server.reply is not None:
            status, body = self.server.reply
        elif parts.path != "/metadata/identity/oauth2/token" or self.headers.get("Metadata") != "true":
            status, body = 400, json.dumps({"error": "invalid_request", "error_description": "bad request"})
        else:
            who = query.get("client_id", "system")
            body = json.dumps(
                {
                    "access_token": f"mi-token-for-{who}-{len(self.server.requests)}",
                    "expires_in": "3599",
                    "resource": query.get("resource"),
                    "token_type": "Bearer",
                }
            )
            status = 200
        self.send_json(status, body)


@pytest.fixture
def imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeImds]:
    for name in (
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IDENTITY_SERVER_THUMBPRINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IMDS_ENDPOINT",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    with FakeImds().running() as server:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.url)
        yield server


def test_user_assigned_identity_token_is_the_assertion_and_cached(imds: FakeImds) -> None:
    session = requests.Session()
    source = ManagedIdentitySource(0, client_id=MI_CLIENT_ID, resource=EXCHANGE, http_session=session)
    assertion = source.client_credential()["client_assertion"]
    assert assertion() == f"mi-token-for-{MI_CLIENT_ID}-1"
    assert assertion() == f"mi-token-for-{MI_CLIENT_ID}-1"  # MSAL's MI cache answered
    [request] = imds.requests
    assert request["path"] == "/metadata/identity/oauth2/token"
    assert request["metadata"] == "true"
    assert request["query"]["resource"] == EXCHANGE
    assert request["query"]["client_id"] == MI_CLIENT_ID
    assert request["query"]["api-version"] == "2018-02-01"
    assert source.describe() == f"SignedAssertionFromManagedIdentity (user-assigned {MI_CLIENT_ID})"


def test_system_assigned_identity_via_build_sources(imds: FakeImds) -> None:
    ad = AzureAdConfig(
        tenant_id="7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14",
        client_id="3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58",
        credentials=(CredentialConfig(0, "SignedAssertionFromManagedIdentity"),),
    )
    [source] = build_sources(ad)
    assert source.client_credential()["client_assertion"]() == "mi-token-for-system-1"  # type: ignore[index,operator]
    assert "client_id" not in imds.requests[0]["query"]


@pytest.mark.parametrize(
    ("status", "body", "transient", "message"),
    [
        (
            500,
            json.dumps({"error": "server_error", "error_description": "IMDS is sad"}),
            True,
            "server_error",
        ),
        (429, json.dumps({"error": "too_many_requests"}), True, "too_many_requests"),
        (
            400,
            json.dumps({"error": "invalid_request", "error_description": "Identity not found"}),
            False,
            "Identity not found",
        ),
        (502, "<html>bad gateway</html>", True, "non-JSON"),
    ],
)
def test_endpoint_errors_become_credential_errors(
    imds: FakeImds, status: int, body: str, transient: bool, message: str
) -> None:
    imds.reply = (status, body)
    source = ManagedIdentitySource(0, client_id=MI_CLIENT_ID, resource=EXCHANGE)
    with pytest.raises(CredentialError, match=message) as info:
        source.client_credential()["client_assertion"]()
    assert info.value.transient is transient


def test_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{port}")
    source = ManagedIdentitySource(0, client_id=None, resource=EXCHANGE, timeout=(2.0, 2.0))
    with pytest.raises(CredentialError, match="unreachable") as info:
        source.client_credential()["client_assertion"]()
    assert info.value.transient is True


def test_a_call_nested_in_a_token_call_leaves_that_calls_state_alone(imds: FakeImds) -> None:
    """MSAL fetches the managed identity's token as the blueprint's assertion, on the worker
    thread of the blueprint's token call: the IMDS request must not carry that call's
    correlation id, and its status must not become that call's (the authority's) status."""
    outer = call_state()
    outer.reset(correlation_id="corr-of-the-token-call")
    outer.status = 400
    imds.reply = (500, json.dumps({"error": "server_error", "error_description": "IMDS is sad"}))
    source = ManagedIdentitySource(0, client_id=MI_CLIENT_ID, resource=EXCHANGE, http_session=requests.Session())
    with pytest.raises(CredentialError, match=r"\[HTTP 500\]"):  # its own status, read from its own state
        source.client_credential()["client_assertion"]()
    assert call_state() is outer
    assert (outer.status, outer.correlation_id) == (400, "corr-of-the-token-call")
    assert imds.requests and all(r["client_request_id"] is None for r in imds.requests)
    assert all(r["path"] == "/metadata/identity/oauth2/token" for r in imds.requests)


def test_token_responses_are_never_kept_like_discovery_documents(imds: FakeImds) -> None:
    """The managed identity's tokens are GETs: two sources asking make two requests."""
    session = requests.Session()
    for expected in (1, 2):
        source = ManagedIdentitySource(0, client_id=MI_CLIENT_ID, resource=EXCHANGE, http_session=session)
        assert source.client_credential()["client_assertion"]() == f"mi-token-for-{MI_CLIENT_ID}-{expected}"
    assert len(imds.requests) == 2
