"""``SourceType=SignedAssertionFilePath``: a federated token file (AKS workload identity).

The kubelet rotates the projected token by swapping a ``..data`` symlink, so the path is
stat'ed on every call (cheap) and re-read only when the stat changes.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

from agent_token_broker.credentials.base import (
    CredentialError,
    CredentialSource,
    StatKey,
    read_credential_file,
    stat_key,
)


class AssertionFile:
    """A zero-argument callable returning the file's current content, stripped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stat: StatKey | None = None
        self._content = ""

    def __call__(self) -> str:
        current = stat_key(self.path)
        if current is None:
            raise CredentialError(f"{self.path}: signed assertion file not found", transient=True)
        with self._lock:
            if current != self._stat or not self._content:
                content = self._read()
                if not content:
                    raise CredentialError(f"{self.path}: signed assertion file is empty", transient=True)
                self._stat, self._content = current, content
            return self._content

    def _read(self) -> str:
        data = read_credential_file(self.path, "signed assertion file")
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise CredentialError(f"{self.path}: cannot read signed assertion file (not UTF-8 text)") from None

    def __repr__(self) -> str:
        return f"<AssertionFile {self.path}>"


class SignedAssertionFileSource(CredentialSource):
    """Returns ``{"client_assertion": AssertionFile}``; the callable re-reads, so ``version()`` is constant."""

    source_type = "SignedAssertionFilePath"
    key = "SignedAssertionFileDiskPath"

    def __init__(self, index: int, path: str) -> None:
        self.index = index
        self.path = path
        self._assertion = AssertionFile(path)

    def describe(self) -> str:
        return f"SignedAssertionFilePath {self.path}"

    def preflight(self) -> str | None:
        """A projected token file (workload identity) may appear after start: missing or empty is a warning."""
        try:
            self._assertion()
        except CredentialError as exc:
            if not exc.transient:
                raise
            return f"{exc}; retrying (a projected token file can appear after the broker starts)"
        return None

    def client_credential(self) -> dict[str, Any]:
        self._assertion()  # fail now, with a clear message, if the file is missing or empty
        return {"client_assertion": self._assertion}

    def version(self) -> Hashable:
        return 0
