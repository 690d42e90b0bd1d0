"""The broker's one outbound TLS trust store.

Source: ``REQUESTS_CA_BUNDLE``, else ``SSL_CERT_FILE`` (a PEM bundle, or a directory of
hashed certificates as ``c_rehash`` makes), else the system's default trust. A variable
naming a missing path is a configuration error naming the variable.

Every outbound client uses the :class:`TrustStore`'s current :class:`ssl.SSLContext`:
MSAL's ``requests`` session (token requests, managed identity) and the aiohttp
sessions (signing keys, readiness probe, downstream APIs). :meth:`TrustStore.watch`
re-checks the file every few seconds (off the event loop, bounded in time) and, when
it changed, builds a new context and tells the clients, so a rotated authority CA is
trusted everywhere at once. A bundle that disappears or stops parsing keeps the
last good context (and logs why).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent_token_broker.fileio import FILE_TIMEOUT_SECONDS, read_file, run_off_loop, stat_file
from agent_token_broker.settings import ConfigError

log = logging.getLogger("agent_token_broker.trust")

TRUST_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
TRUST_RECHECK_SECONDS = 5.0
Stamp = tuple[int, int, int, int]


def trust_source(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(variable, path)`` of the configured CA bundle, or None for the system trust."""
    env = os.environ if env is None else env
    for name in TRUST_VARIABLES:
        value = (env.get(name) or "").strip()
        if value:
            return name, value
    return None


def trust_problems(env: Mapping[str, str] | None = None) -> list[str]:
    """Configuration problems of the trust variables (one line each; empty when fine)."""
    source = trust_source(env)
    if source is None:
        return []
    try:
        _load(source[1])
    except (OSError, ssl.SSLError, ValueError) as exc:
        return [_problem(source, exc)]
    return []


def _problem(source: tuple[str, str], exc: BaseException) -> str:
    name, path = source
    if isinstance(exc, FileNotFoundError):
        return f"{name}: the CA bundle {path} does not exist"
    return f"{name}: cannot use the CA bundle {path} ({_reason(exc)})"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _stamp(path: str) -> Stamp:
    st = stat_file(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class _Material:
    """What a context is built from: PEM text, or a hashed directory (``c_rehash``)."""

    cadata: str | None = None
    capath: str | None = None

    def context(self) -> ssl.SSLContext:
        if self.cadata is None and self.capath is None:
            return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.cadata, capath=self.capath)


def _load(path: str) -> tuple[_Material, Stamp]:
    """The trust material at ``path`` (checked by building a context from it) and its stamp."""
    stamp = _stamp(path)
    if os.path.isdir(path):
        material = _Material(capath=path)
    else:
        material = _Material(cadata=read_file(path, timeout=FILE_TIMEOUT_SECONDS).decode("ascii", "replace"))
        if not material.context().get_ca_certs():
            raise ValueError("no certificate in the bundle")
    return material, stamp


Listener = Callable[[], None]


class TrustStore:
    """The current outbound :class:`ssl.SSLContext`, reloaded when the CA bundle changes.

    :raises ConfigError: at construction, when a trust variable names a missing or unusable path.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, recheck_seconds: float = TRUST_RECHECK_SECONDS):
        self.source = trust_source(env)
        self._recheck = recheck_seconds
        self._listeners: list[Listener] = []
        self._stamp: Stamp | None = None
        self._last_problem: str | None = None
        self._material = _Material()
        if self.source is not None:
            try:
                self._material, self._stamp = _load(self.source[1])
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError([_problem(self.source, exc)]) from None
        self._context = self._material.context()

    @property
    def context(self) -> ssl.SSLContext:
        """The shared context for aiohttp clients (no I/O)."""
        return self._context

    def new_context(self) -> ssl.SSLContext:
        """A separate context from the same material, for a client that modifies its context
        (urllib3 sets ``verify_mode`` on it). No file I/O."""
        return self._material.context()

    @property
    def path(self) -> str | None:
        return self.source[1] if self.source else None

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener()`` (on the event loop) after each reload."""
        self._listeners.append(listener)

    def check_now(self) -> bool:
        """Reload if the bundle changed (blocking, bounded; call off the loop). True when reloaded."""
        if self.source is None:
            return False
        name, path = self.source
        try:
            if _stamp(path) == self._stamp:
                return False
            material, stamp = _load(path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            problem = _problem(self.source, exc)
            if problem != self._last_problem:  # once per new problem, not every few seconds
                log.warning("trust: %s; keeping the previous CA bundle", problem)
                self._last_problem = problem
            return False
        self._last_problem = None
        self._material, self._stamp = material, stamp
        self._context = material.context()
        log.info("trust: %s=%s changed; outbound clients now use the new CA bundle", name, path)
        return True

    async def watch(self) -> None:
        """Re-check the bundle every ``recheck_seconds`` until cancelled."""
        if self.source is None:
            return
        while True:
            await asyncio.sleep(self._recheck)
            if await run_off_loop(self.check_now):
                for listener in self._listeners:
                    listener()
