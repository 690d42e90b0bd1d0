"""The credential-source interface shared by every blueprint credential type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any

from agent_token_broker.fileio import FileTimeout, NotRegularFile, read_file, stat_file


class CredentialError(Exception):
    """A credential could not be produced. The message never contains key material or secrets.

    ``transient`` is True when retrying later may succeed without a configuration change
    (a network error, a 5xx from the managed-identity endpoint, a file not yet mounted).
    """

    def __init__(self, message: str, *, transient: bool = False, key: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.key = key  # the credential's configuration key at fault, when not the source's own file


class CredentialSource(ABC):
    """One ``AzureAd__ClientCredentials__N`` entry, ready to hand to MSAL.

    ``client_credential()`` is synchronous and may do file or network I/O: call it in a
    worker thread. Its result is passed as ``msal.ConfidentialClientApplication(client_credential=...)``.
    When ``version()`` changes, the caller rebuilds its MSAL application with a fresh
    ``client_credential()``.
    """

    index: int
    source_type: str
    key = ""  # the credential key naming what :meth:`preflight` checks (e.g. ``CertificateDiskPath``)

    @abstractmethod
    def describe(self) -> str:
        """A human description with secrets redacted, e.g. ``Path /etc/certs/bp.pfx (PFX)``."""

    @abstractmethod
    def client_credential(self) -> str | dict[str, Any]:
        """The MSAL ``client_credential`` value. :raises CredentialError: when it cannot be built."""

    @abstractmethod
    def version(self) -> Hashable:
        """A value that changes whenever the underlying material changes."""

    def preflight(self) -> str | None:
        """Check at start-up what can be checked now (no network).

        :raises CredentialError: the credential cannot work as configured.
        :returns: a warning when something is missing that may legitimately appear later.
        """
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.index} {self.describe()}>"


StatKey = tuple[int, int, int, int]


def stat_key(path: str) -> StatKey | None:
    """``(st_mtime_ns, st_size, st_ino, st_dev)`` of ``path`` (following symlinks), or None if missing.

    Bounded in time (a stuck mount must not hang a worker thread, hence shutdown).
    :raises CredentialError: (transient) when the file system does not answer in time.
    """
    try:
        st = stat_file(path)
    except FileTimeout as exc:
        raise CredentialError(str(exc), transient=True) from None
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def read_credential_file(path: str, what: str) -> bytes:
    """The bytes of a credential file, read in a daemon thread with a timeout.

    :raises CredentialError: missing (transient: it may be mounted later), not a regular file
        (a FIFO would block forever), no answer in time (transient), or unreadable.
    """
    try:
        return read_file(path)
    except FileNotFoundError:
        raise CredentialError(f"{path}: {what} not found", transient=True) from None
    except NotRegularFile:
        raise CredentialError(f"{path}: {what} is not a regular file (a FIFO, socket or device?)") from None
    except FileTimeout as exc:
        raise CredentialError(str(exc), transient=True) from None
    except OSError as exc:
        raise CredentialError(f"{path}: cannot read {what} ({os_reason(exc)})") from None


def os_reason(exc: OSError) -> str:
    """A short, secret-free reason for an OS error."""
    return exc.strerror or type(exc).__name__
