"""``SourceType=Path``: a mounted certificate, PEM or PFX, reloaded when the file changes."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from agent_token_broker.credentials.base import (
    CredentialError,
    CredentialSource,
    read_credential_file,
    stat_key,
)
from agent_token_broker.credentials.cert_assertion import CertificateAssertion
from agent_token_broker.credentials.cert_loader import LoadedCertificate, load_certificate
from agent_token_broker.settings import Secret


class CertificateSource(CredentialSource):
    """Reads ``CertificateDiskPath`` (and ``PrivateKeyDiskPath`` if set) on every ``client_credential()``.

    Returns ``{"client_assertion": CertificateAssertion}`` (PS256, ``x5t#S256``, ``x5c`` only
    with ``SendX5C``). ``version()`` is the stat of the file(s): a rotated certificate shows up
    as a new version, and the caller rebuilds its MSAL application.
    """

    source_type = "Path"
    key = "CertificateDiskPath"

    def __init__(
        self,
        index: int,
        path: str,
        *,
        client_id: str,
        password: Secret | None = None,
        key_path: str | None = None,
        send_x5c: bool = False,
        default_audience: str | None = None,
    ) -> None:
        self.index = index
        self.path = path
        self.key_path = key_path
        self._client_id = client_id
        self._password = password
        self._send_x5c = send_x5c
        self._format: str | None = None
        self._default_audience = default_audience

    def describe(self) -> str:
        fmt = self._format or ("PFX" if self.path.lower().endswith((".pfx", ".p12")) else "PEM or PFX")
        text = f"Path {self.path} ({fmt})"
        if self.key_path:
            text += f" key {self.key_path}"
        if self._send_x5c:
            text += " with x5c"
        return text

    def version(self) -> Hashable:
        return (stat_key(self.path), stat_key(self.key_path) if self.key_path else None)

    def load(self) -> LoadedCertificate:
        """Read and parse the file(s) now. :raises CredentialError:"""
        cert_data = _read(self.path, "CertificateDiskPath")
        key_data = _read(self.key_path, "PrivateKeyDiskPath") if self.key_path else None
        password = self._password.reveal().encode() if self._password else None
        loaded = load_certificate(
            cert_data, password, name=self.path, key_data=key_data, key_name=self.key_path or ""
        )
        self._format = loaded.format
        return loaded

    def preflight(self) -> str | None:
        """A mounted certificate is there when the container starts: anything wrong is an error."""
        self.load()
        return None

    def client_credential(self) -> dict[str, Any]:
        loaded = self.load()
        return {
            "client_assertion": CertificateAssertion(
                loaded,
                client_id=self._client_id,
                send_x5c=self._send_x5c,
                default_audience=self._default_audience,
            )
        }


def _read(path: str, key: str) -> bytes:
    try:
        return read_credential_file(path, "file")
    except CredentialError as exc:
        exc.key = key  # CertificateDiskPath or PrivateKeyDiskPath, for start-up checks
        raise


__all__ = ["CertificateSource"]
