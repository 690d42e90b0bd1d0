"""``SourceType=SignedAssertionFromManagedIdentity``: a managed-identity token as the client assertion.

MSAL's ``ManagedIdentityClient`` picks the endpoint (IMDS, App Service, Azure Arc, ...) from
the environment, and caches its own tokens (refreshing at half-life for long-lived ones).
The token is requested for ``api://AzureADTokenExchange`` (a resource, not a scope).
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from typing import Any

import msal
import requests

from agent_token_broker.credentials.base import CredentialError, CredentialSource
from agent_token_broker.msal_http import CallState, UpstreamHttp, nested_call_state

DEFAULT_TIMEOUT = (3.0, 10.0)


class ManagedIdentityAssertion:
    """A zero-argument callable: the managed identity's token for the exchange resource."""

    def __init__(self, client: Any, resource: str, label: str) -> None:
        self._client = client
        self._resource = resource
        self._label = label

    def __call__(self) -> str:
        # Usually called by MSAL inside a blueprint token call on this worker thread: the
        # managed identity's request gets its own call state (status) and leaves that call's.
        with nested_call_state() as state:
            return self._acquire(state)

    def _acquire(self, state: CallState) -> str:
        try:
            result = self._client.acquire_token_for_client(resource=self._resource)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise CredentialError(
                f"{self._label}: managed identity endpoint unreachable ({type(exc).__name__})", transient=True
            ) from None
        except requests.RequestException as exc:
            raise CredentialError(
                f"{self._label}: managed identity request failed ({type(exc).__name__})", transient=True
            ) from None
        except ValueError:  # a non-JSON body, typically an error page from a proxy or a 5xx
            raise CredentialError(
                f"{self._label}: managed identity endpoint returned a non-JSON response"
                + _status_suffix(state.status),
                transient=True,
            ) from None
        except msal.ManagedIdentityError as exc:
            raise CredentialError(f"{self._label}: {_short(str(exc))}") from None
        token = result.get("access_token") if isinstance(result, dict) else None
        if token:
            return str(token)
        status = state.status
        error = (
            _short(str(result.get("error", "unknown_error"))) if isinstance(result, dict) else "unknown_error"
        )
        description = _short(str(result.get("error_description", ""))) if isinstance(result, dict) else ""
        transient = status is None or status == 429 or status >= 500
        detail = f"{error}: {description}" if description else error
        raise CredentialError(
            f"{self._label}: managed identity token request failed ({detail}){_status_suffix(status)}",
            transient=transient,
        )

    def __repr__(self) -> str:
        return f"<ManagedIdentityAssertion {self._label} resource={self._resource}>"


def _status_suffix(status: int | None) -> str:
    return f" [HTTP {status}]" if status is not None else ""


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ManagedIdentitySource(CredentialSource):
    """Returns ``{"client_assertion": ManagedIdentityAssertion}``; MSAL's MI client caches and
    refreshes its own token, so ``version()`` is constant."""

    source_type = "SignedAssertionFromManagedIdentity"

    def __init__(
        self,
        index: int,
        *,
        client_id: str | None,
        resource: str,
        http_session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.index = index
        self.client_id = client_id
        self.resource = resource
        session = http_session if http_session is not None else requests.Session()
        http = UpstreamHttp(
            connect_timeout=timeout[0], read_timeout=timeout[1], session=session, cache_discovery=False
        )
        identity: Any = (
            msal.UserAssignedManagedIdentity(client_id=client_id)
            if client_id
            else msal.SystemAssignedManagedIdentity()
        )
        # Service Fabric pins its server certificate on a derived requests.Session; MSAL needs the session.
        http_client: Any = session if os.environ.get("IDENTITY_SERVER_THUMBPRINT") else http
        self._client = msal.ManagedIdentityClient(identity, http_client=http_client)
        self._assertion = ManagedIdentityAssertion(self._client, resource, self.describe())

    def describe(self) -> str:
        who = f"user-assigned {self.client_id}" if self.client_id else "system-assigned"
        return f"SignedAssertionFromManagedIdentity ({who})"

    def client_credential(self) -> dict[str, Any]:
        return {"client_assertion": self._assertion}

    def version(self) -> Hashable:
        return 0
