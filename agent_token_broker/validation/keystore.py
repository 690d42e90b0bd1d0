"""Fetches and caches the authority's OIDC metadata and signing keys.

See ``README.md`` beside this file for the refresh rules. In short:

* the first use (or :meth:`KeyStore.prefetch`) fetches metadata, then the JWKS;
* a lookup of a known ``kid`` does no I/O;
* an unknown ``kid`` triggers at most one successful JWKS refetch per
  ``refetch_min_interval``, and concurrent triggers share one in-flight fetch
  (single-flight); when the fetch fails, callers are told the keys are unavailable
  (503, not "unknown key") and the next request after a short backoff fetches again;
* after ``metadata_ttl`` both documents are refreshed in the background while the
  cached keys keep serving; a failed refresh keeps the old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from agent_token_broker.validation.documents import (
    DocumentError,
    Metadata,
    SigningKey,
    parse_jwks,
    parse_metadata,
)
from agent_token_broker.validation.errors import ValidatorUnavailable

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024
# After a failed fetch with nothing cached, callers fail fast for this long
# (capped by refetch_min_interval) instead of each waiting on the authority.
FAILURE_BACKOFF_S = 5.0


class _FetchError(Exception):
    """A fetch failed; the message is safe to log (no URL query, no body)."""


class KeyStore:
    """Cached metadata + JWKS of one authority, fetched with an aiohttp session."""

    def __init__(
        self,
        *,
        metadata_url: str,
        tenant_id: str,
        session: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
        refetch_min_interval: float,
        metadata_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metadata_url = metadata_url
        self._tenant_id = tenant_id
        # A callable is asked for the session at each fetch (the broker replaces its sessions
        # when the CA bundle changes).
        self._session = session if callable(session) else (lambda: session)
        self._refetch_min_interval = refetch_min_interval
        self._metadata_ttl = metadata_ttl
        self._clock = clock
        self._metadata: Metadata | None = None
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at: float | None = None  # last full (metadata + JWKS) success
        self._last_refetch: float | None = None  # last unknown-kid refetch attempt
        self._last_failure: float | None = None
        self._generation = 0  # bumped on every successful JWKS load
        self._inflight: asyncio.Task[None] | None = None
        self._background: asyncio.Task[None] | None = None

    # -- state ---------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once metadata and at least one signing key are cached."""
        return self._metadata is not None and bool(self._keys)

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def metadata(self) -> Metadata:
        if self._metadata is None:
            raise ValidatorUnavailable()
        return self._metadata

    def cached_key(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    # -- loading -------------------------------------------------------------
    async def ensure_loaded(self) -> None:
        """Make sure keys are cached; refresh stale metadata in the background.

        Raises :class:`ValidatorUnavailable` if nothing is cached and the fetch fails
        (or failed less than a short backoff ago).
        """
        if self.ready:
            if self._is_stale() and self._inflight is None and not self._in_failure_backoff(stale=True):
                self._start_background_refresh()
            return
        if self._inflight is None and self._in_failure_backoff():
            raise ValidatorUnavailable()
        await self._run(full=True)
        if not self.ready:
            raise ValidatorUnavailable()

    async def prefetch(self) -> None:
        """Fetch metadata + JWKS now unless cached and fresh (startup / readiness).

        Raises :class:`ValidatorUnavailable` only if the fetch fails and nothing is cached.
        """
        if self.ready and not self._is_stale():
            return
        await self._run(full=True)
        if not self.ready:
            raise ValidatorUnavailable()

    async def refetch_for_unknown_kid(self, seen_generation: int) -> bool:
        """Refetch the JWKS for a ``kid`` that is not cached, if allowed; False when it cannot be had.

        No fetch happens if the JWKS was reloaded since ``seen_generation`` (the caller
        already waited for a fresh set) or an unknown-kid refetch *succeeded* less than
        ``refetch_min_interval`` ago -- unless one is in flight, which the caller then
        joins. So a flood of random kids costs one fetch per interval.

        Returns True when the cached keys are current (a ``kid`` still missing is unknown
        to the authority: 401), False when the authority could not be asked: the fetch
        failed now, or failed less than the failure backoff ago (the caller answers 503;
        the first request after the backoff fetches again, so recovery is not delayed by
        the refetch interval).
        """
        if self._generation != seen_generation:
            return True
        if self._inflight is None:
            now = self._clock()
            if self._in_failure_backoff():
                return False
            if self._last_refetch is not None and now - self._last_refetch < self._refetch_min_interval:
                return True
            self._last_refetch = now
        await self._run(full=False)
        if self._generation != seen_generation:
            return True
        self._last_refetch = None  # it failed: the interval counts from a successful refetch only
        return False

    async def aclose(self) -> None:
        """Cancel a background refresh, if any."""
        for task in (self._background, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- internals -----------------------------------------------------------
    def _is_stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= self._metadata_ttl

    def _in_failure_backoff(self, *, stale: bool = False) -> bool:
        # With keys cached, a failing background refresh is retried once per
        # refetch_min_interval; with nothing cached, after a short backoff.
        backoff = self._refetch_min_interval if stale else min(FAILURE_BACKOFF_S, self._refetch_min_interval)
        return self._last_failure is not None and self._clock() - self._last_failure < backoff

    def _start_background_refresh(self) -> None:
        self._background = asyncio.get_running_loop().create_task(self._run(full=True))

    async def _run(self, *, full: bool) -> None:
        """Single-flight: start a load or join the one in flight; never raises fetch errors."""
        task = self._inflight
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(full=full))
            self._inflight = task
            task.add_done_callback(self._clear_inflight)
        # shield: a cancelled waiter must not cancel the fetch others share.
        await asyncio.shield(task)

    def _clear_inflight(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _load(self, *, full: bool) -> None:
        try:
            metadata = self._metadata
            if full or metadata is None:
                metadata = parse_metadata(await self._get_json(self._metadata_url), self._tenant_id)
            keys = parse_jwks(await self._get_json(metadata.jwks_uri), self._tenant_id)
        except (_FetchError, DocumentError) as exc:
            self._last_failure = self._clock()
            log.warning("inbound validation: fetching signing keys failed: %s", exc)
            return
        self._metadata = metadata
        self._keys = keys
        self._generation += 1
        self._last_failure = None
        if full:
            self._loaded_at = self._clock()
        log.info("inbound validation: loaded %d signing keys", len(keys))

    async def _get_json(self, url: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        try:
            async with self._session().get(url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise _FetchError(f"HTTP {resp.status}")
                body = bytearray()
                while chunk := await resp.content.read(64 * 1024):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _FetchError("document too large")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _FetchError(type(exc).__name__) from exc
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _FetchError("document is not JSON") from exc
