"""``SourceType=ClientSecret``: a shared secret (development and tests only)."""

from __future__ import annotations

from collections.abc import Hashable

from agent_token_broker.credentials.base import CredentialError, CredentialSource
from agent_token_broker.settings import Secret


class ClientSecretSource(CredentialSource):
    """Hands MSAL the secret string; MSAL sends it as ``client_secret`` in the body."""

    source_type = "ClientSecret"

    def __init__(self, index: int, secret: Secret | None) -> None:
        self.index = index
        self._secret = secret

    def describe(self) -> str:
        return "ClientSecret (<redacted>)"

    def client_credential(self) -> str:
        if self._secret is None or not self._secret.reveal():
            raise CredentialError(f"credential #{self.index}: ClientSecret is empty")
        return self._secret.reveal()

    def version(self) -> Hashable:
        return 0
