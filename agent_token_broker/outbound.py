"""The broker's aiohttp client sessions, one connection pool per purpose.

* ``entra``: the authority's metadata and signing keys (JWKS) and the readiness probe;
  a small pool of its own (:data:`ENTRA_CONNECTIONS`), so slow downstream APIs can never
  starve a signing-key refetch.
* ``downstream``: ``/DownstreamApi*`` calls, at most ``Broker__Downstream__MaxConnections``.

MSAL's token requests use a third pool (``requests``, ``Broker__Upstream__MaxConcurrency``;
see :mod:`agent_token_broker.msal_http`). All three trust the one
:class:`~agent_token_broker.trust.TrustStore`; when the CA bundle changes, both sessions
are replaced (new connections use the new trust) and the old ones are closed after the
requests they carry had time to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiohttp

from agent_token_broker.trust import TrustStore

ENTRA_CONNECTIONS = 8


class OutboundSessions:
    """Holds the current ``entra`` and ``downstream`` sessions (create inside a running loop)."""

    def __init__(
        self,
        trust: TrustStore,
        *,
        connect_timeout: float,
        read_timeout: float,
        downstream_connections: int,
        retire_after: float,
    ) -> None:
        self._connect = connect_timeout
        self._read = read_timeout
        self._downstream_limit = downstream_connections
        self._retire_after = retire_after
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: list[aiohttp.ClientSession] = []
        self._trust = trust
        self.entra, self.downstream = self._build(trust.context)
        trust.subscribe(self._trust_changed)

    def _session(self, context: ssl.SSLContext, limit: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=limit, limit_per_host=limit),
            cookie_jar=aiohttp.DummyCookieJar(),  # an API's cookies must not reach other callers
            timeout=aiohttp.ClientTimeout(total=self._read, connect=self._connect),
        )

    def _build(self, context: ssl.SSLContext) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        return self._session(context, ENTRA_CONNECTIONS), self._session(context, self._downstream_limit)

    def _trust_changed(self) -> None:
        old = (self.entra, self.downstream)
        self.entra, self.downstream = self._build(self._trust.context)
        self._retired.extend(old)
        loop = asyncio.get_running_loop()
        loop.call_later(self._retire_after, self._close_later, old)

    def _close_later(self, sessions: tuple[aiohttp.ClientSession, ...]) -> None:
        for session in sessions:
            if session in self._retired:
                self._retired.remove(session)
                task = asyncio.get_running_loop().create_task(session.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        sessions = [self.entra, self.downstream, *self._retired]
        self._retired.clear()
        for session in sessions:
            await session.close()
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task
