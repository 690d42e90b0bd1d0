"""The credential-source interface shared by every blueprint credential type."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any


class CredentialError(Exception):
    """A credential could not be produced. The message never contains key material or secrets.

    ``transient`` is True when retrying later may succeed without a configuration change
    (a network error, a 5xx from the managed-identity endpoint, a file not yet mounted).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class CredentialSource(ABC):
    """One ``AzureAd__ClientCredentials__N`` entry, ready to hand to MSAL.

    ``client_credential()`` is synchronous and may do file or network I/O: call it in a
    worker thread. Its result is passed as ``msal.ConfidentialClientApplication(client_credential=...)``.
    When ``version()`` changes, the caller rebuilds its MSAL application with a fresh
    ``client_credential()``.
    """

    index: int
    source_type: str

    @abstractmethod
    def describe(self) -> str:
        """A human description with secrets redacted, e.g. ``Path /etc/certs/bp.pfx (PFX)``."""

    @abstractmethod
    def client_credential(self) -> str | dict[str, Any]:
        """The MSAL ``client_credential`` value. :raises CredentialError: when it cannot be built."""

    @abstractmethod
    def version(self) -> Hashable:
        """A value that changes whenever the underlying material changes."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.index} {self.describe()}>"


StatKey = tuple[int, int, int, int]


def stat_key(path: str) -> StatKey | None:
    """``(st_mtime_ns, st_size, st_ino, st_dev)`` of ``path`` (following symlinks), or None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def os_reason(exc: OSError) -> str:
    """A short, secret-free reason for an OS error."""
    return exc.strerror or type(exc).__name__
