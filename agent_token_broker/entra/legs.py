"""The Agent ID legs (T1, T2, agent app token, agent OBO, agent-user ``user_fic``, blueprint app/OBO).

Each leg is one MSAL call run in a bounded thread pool (MSAL is synchronous);
the event loop never blocks. Legs return a :class:`CachedToken` or raise an
:class:`AcquireError`; composing legs and caching their results is the token
service's job (``agent_token_broker/tokens.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from agent_token_broker.cache.observer import NullObserver
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.credentials import CredentialError, CredentialSource
from agent_token_broker.entra import errors
from agent_token_broker.entra.apps import AppRegistry
from agent_token_broker.entra.revocation import LegParties, Revocation, agent_tag, blueprint_tag
from agent_token_broker.msal_http import UpstreamHttp, call_state

if TYPE_CHECKING:
    from agent_token_broker.tracing import Tracer

__all__ = ["EXCHANGE_SCOPE", "EntraLegs", "UpstreamObserver", "agent_tag", "blueprint_tag"]

EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"
log = logging.getLogger("agent_token_broker.entra")


class UpstreamObserver(Protocol):
    """Told about every upstream token call (from MSAL worker threads; must be thread-safe and cheap)."""

    def upstream_started(self, leg: str) -> None: ...

    def upstream_finished(self, leg: str, error: AcquireError | None, seconds: float) -> None: ...

    def identity_revoked(self, leg: str, revocation: Revocation) -> None: ...


def _traced(tracer: Tracer, leg: str, work: Callable[[], CachedToken]) -> Callable[[], CachedToken]:
    """``work`` inside a client span ``entra <leg>``: Entra's error code, correlation id and HTTP
    status as attributes when it refuses (never a token or an assertion)."""

    def traced() -> CachedToken:
        with tracer.client(f"entra {leg}") as span:
            span.set("entra.leg", leg)
            try:
                return work()
            except AcquireError as err:
                if err.error_code:
                    span.set("entra.error_code", err.error_code)
                if err.correlation_id:
                    span.set("entra.correlation_id", err.correlation_id)
                if err.status is not None:
                    span.set("http.response.status_code", err.status)
                span.fail(err.error_code or ("transient" if err.transient else "refused"))
                raise

    return traced


@functools.lru_cache(maxsize=1024)
def _meta(token_type: str, scope: str) -> Mapping[str, str]:
    """Token metadata, shared between tokens with the same values (read-only)."""
    return MappingProxyType({"token_type": token_type, "scope": scope} if scope else {"token_type": token_type})


def _to_token(result: Mapping[str, Any], now: float) -> CachedToken:
    expires_in = float(result.get("expires_in") or 0)
    refresh_in = result.get("refresh_in")
    refresh_at: float | None = None
    if refresh_in is not None:
        refresh_at = now + float(refresh_in)
    elif result.get("refresh_on"):
        refresh_at = float(result["refresh_on"])
    meta = _meta(str(result.get("token_type") or "Bearer"), str(result.get("scope") or ""))
    return CachedToken(
        value=str(result["access_token"]),
        expires_at=now + expires_in,
        acquired_at=now,
        refresh_at=refresh_at,
        meta=meta,
    )


class EntraLegs:
    """Token legs for one blueprint over MSAL.

    :param blueprint_id: the blueprint's application (client) id.
    :param tenant_id: the home tenant (default for every leg).
    :param instance: authority host, e.g. ``https://login.microsoftonline.com/``.
    :param sources: the blueprint's credential sources, in the order they are tried.
    :param http: the HTTP client shared by every MSAL app.
    :param max_workers: size of the thread pool MSAL calls run in (bounds in-flight upstream calls).
    :param max_agent_apps: LRU bound on per-agent MSAL apps.
    """

    def __init__(
        self,
        *,
        blueprint_id: str,
        tenant_id: str,
        instance: str,
        sources: Sequence[CredentialSource],
        http: UpstreamHttp,
        max_workers: int = 16,
        max_agent_apps: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not sources:
            raise ValueError("at least one blueprint credential source is required")
        self.blueprint_id = blueprint_id
        self.tenant_id = tenant_id
        self._sources = list(sources)
        self._active = 0
        self._active_lock = threading.Lock()
        self._http = http
        self._apps = AppRegistry(instance=instance, http=http, max_agent_apps=max_agent_apps)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="msal")
        self._clock = clock
        self.credential_ok = False
        self.authority_ok = False
        self.observer: UpstreamObserver = NullObserver()
        self.tracer: Tracer | None = None  # client spans per leg when tracing is on

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    async def _run(
        self,
        fn: Callable[[], Mapping[str, Any] | None],
        *,
        leg: str,
        parties: LegParties,
        assertion: str | None = None,
        correlation_id: str | None = None,
    ) -> CachedToken:
        def call() -> CachedToken:
            state = call_state()
            state.reset(assertion=assertion, correlation_id=correlation_id)
            try:
                result = fn()
            except Exception as exc:
                if state.status is not None:
                    self.authority_ok = True
                if state.refusal is None:
                    raise errors.from_exception(exc, state) from None
                # Entra refused the authority's discovery (AADSTS90002: the tenant does not
                # exist): its answer, classified like a token endpoint's, not MSAL's ValueError.
                result = state.refusal
            if state.status is not None and state.status < 500:
                self.authority_ok = True
            if not result or "access_token" not in result:
                err, revocation = errors.classify(result or {}, state, parties)
                if revocation is not None:
                    self.observer.identity_revoked(leg, revocation)
                raise err
            return _to_token(result, self._clock())

        def work() -> CachedToken:
            observer = self.observer
            observer.upstream_started(leg)
            started = time.perf_counter()
            failure: AcquireError | None = None
            try:
                return call()
            except AcquireError as err:
                failure = err
                raise
            except Exception as exc:  # not expected: call() classifies what MSAL raises
                failure = AcquireError(type(exc).__name__, transient=True)
                raise
            finally:
                observer.upstream_finished(leg, failure, time.perf_counter() - started)

        tracer = self.tracer
        if tracer is not None:
            work = _traced(tracer, leg, work)
        loop = asyncio.get_running_loop()
        # Run in a copy of the caller's context so logs in the worker carry the request id (and
        # the worker's span, when tracing, is a child of the request's).
        return await loop.run_in_executor(self._pool, contextvars.copy_context().run, work)

    def _warm_up_sync(self) -> str | None:
        """Build the blueprint app (authority discovery) with the first credential that loads."""
        problems = []
        for index, source in enumerate(self._sources):
            try:
                self._apps.blueprint_app(
                    self.blueprint_id, self.tenant_id, (index, source.version()), source.client_credential
                )
                cred = source.client_credential()
                assertion = cred.get("client_assertion") if isinstance(cred, dict) else None
                if callable(assertion):
                    assertion()
            except CredentialError as exc:
                problems.append(f"credential {index} ({source.source_type}): {exc}")
                continue
            except Exception as exc:
                return f"authority discovery failed ({type(exc).__name__})"
            self.credential_ok = True
            self.authority_ok = True
            return None
        return "; ".join(problems) or "no credential"

    async def warm_up(self) -> str | None:
        """Check readiness: ``None`` when a credential loads and the authority answered, else why not."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._warm_up_sync)

    def _parties(self, tenant: str, *, fmi_path: str | None = None, agent: str | None = None) -> LegParties:
        """Who a leg involves (for deciding what a refusal revokes)."""
        if agent is not None:
            return LegParties.agent_leg(self.blueprint_id, agent, tenant, self.tenant_id)
        if fmi_path is not None:
            return LegParties.t1_leg(self.blueprint_id, fmi_path, tenant, self.tenant_id)
        return LegParties.blueprint_leg(self.blueprint_id, tenant, self.tenant_id)

    # -- blueprint ---------------------------------------------------------------------------------

    def _blueprint_call(
        self, tenant: str, call: Callable[[Any], Mapping[str, Any] | None]
    ) -> Mapping[str, Any] | None:
        """Run ``call(app)`` with the first credential that works, in index order (worker thread)."""
        with self._active_lock:
            start = self._active
        last: Exception | None = None
        for offset in range(len(self._sources)):
            index = (start + offset) % len(self._sources)
            source = self._sources[index]
            try:
                app = self._apps.blueprint_app(
                    self.blueprint_id, tenant, (index, source.version()), source.client_credential
                )
                result = call(app)
            except CredentialError as exc:
                log.warning("blueprint credential %d (%s) unusable: %s", index, source.source_type, exc)
                self._apps.forget_blueprint(self.blueprint_id, tenant)
                last = exc
                continue
            if result and "error" in result:
                err = errors.from_result(result, call_state())
                if errors.is_credential_rejection(err) and offset + 1 < len(self._sources):
                    log.warning(
                        "blueprint credential %d (%s) refused by the authority (%s); trying the next",
                        index,
                        source.source_type,
                        err.error_code,
                    )
                    continue
                return result
            self.credential_ok = True
            with self._active_lock:
                self._active = index
            return result
        if isinstance(last, CredentialError):
            raise AcquireError(
                f"no blueprint credential could produce an assertion: {last}",
                transient=bool(getattr(last, "transient", True)),
                retry_after=errors.DEFAULT_TRANSIENT_RETRY,
                error_code="credential_unavailable",
            )
        raise AcquireError("no blueprint credential is configured", transient=False)

    async def blueprint_token(
        self,
        scopes: Sequence[str],
        *,
        tenant: str | None = None,
        fmi_path: str | None = None,
        claims: str | None = None,
        correlation_id: str | None = None,
    ) -> CachedToken:
        """Blueprint ``client_credentials``; with ``fmi_path`` = agent id this is leg 1 (T1)."""
        tenant = tenant or self.tenant_id
        kwargs: dict[str, Any] = {"claims_challenge": claims}
        if fmi_path:
            kwargs["fmi_path"] = fmi_path
        return await self._run(
            lambda: self._blueprint_call(
                tenant, lambda app: app.acquire_token_for_client(list(scopes), **kwargs)
            ),
            leg="t1" if fmi_path else "blueprint_app",
            parties=self._parties(tenant, fmi_path=fmi_path),
            correlation_id=correlation_id,
        )

    async def blueprint_obo(
        self,
        user_assertion: str,
        scopes: Sequence[str],
        *,
        tenant: str | None = None,
        claims: str | None = None,
        correlation_id: str | None = None,
    ) -> CachedToken:
        """The blueprint's own on-behalf-of token (Microsoft's sidecar's plain OBO)."""
        tenant = tenant or self.tenant_id
        return await self._run(
            lambda: self._blueprint_call(
                tenant,
                lambda app: app.acquire_token_on_behalf_of(
                    user_assertion, list(scopes), claims_challenge=claims
                ),
            ),
            leg="blueprint_obo",
            parties=self._parties(tenant),
            correlation_id=correlation_id,
        )

    # -- agent identity ----------------------------------------------------------------------------

    async def _agent_call(
        self,
        agent: str,
        t1: str,
        tenant: str | None,
        leg: str,
        call: Callable[[Any], Mapping[str, Any] | None],
        correlation_id: str | None,
    ) -> CachedToken:
        """Run ``call(app)`` with the agent identity's MSAL app, T1 as its ``client_assertion``."""
        where = tenant or self.tenant_id
        return await self._run(
            lambda: call(self._apps.agent_app(agent, where)),
            leg=leg,
            parties=self._parties(where, agent=agent),
            assertion=t1,
            correlation_id=correlation_id,
        )

    async def agent_app_token(
        self,
        agent: str,
        t1: str,
        scopes: Sequence[str],
        *,
        tenant: str | None = None,
        claims: str | None = None,
        correlation_id: str | None = None,
    ) -> CachedToken:
        """Leg 2: the agent identity's app token (T1 as ``client_assertion``); with the exchange scope, T2."""
        return await self._agent_call(
            agent, t1, tenant, "t2" if list(scopes) == [EXCHANGE_SCOPE] else "app",
            lambda app: app.acquire_token_for_client(list(scopes), claims_challenge=claims),
            correlation_id,
        )  # fmt: skip

    async def agent_obo(
        self,
        agent: str,
        t1: str,
        user_assertion: str,
        scopes: Sequence[str],
        *,
        tenant: str | None = None,
        claims: str | None = None,
        correlation_id: str | None = None,
    ) -> CachedToken:
        """Agent OBO: the user's token exchanged by the agent identity (T1 as ``client_assertion``)."""
        return await self._agent_call(
            agent, t1, tenant, "obo",
            lambda app: app.acquire_token_on_behalf_of(user_assertion, list(scopes), claims_challenge=claims),
            correlation_id,
        )  # fmt: skip

    async def agent_user_token(
        self,
        agent: str,
        t1: str,
        t2: str,
        scopes: Sequence[str],
        *,
        username: str | None = None,
        user_object_id: str | None = None,
        tenant: str | None = None,
        claims: str | None = None,
        correlation_id: str | None = None,
    ) -> CachedToken:
        """Agent-user token (``user_fic``): T1 as ``client_assertion``, T2 as the user FIC."""
        if (username is None) == (user_object_id is None):
            raise ValueError("exactly one of username and user_object_id is required")
        return await self._agent_call(
            agent, t1, tenant, "user_fic",
            lambda app: app.acquire_token_by_user_federated_identity_credential(
                list(scopes), t2, username=username, user_object_id=user_object_id, claims_challenge=claims
            ),
            correlation_id,
        )  # fmt: skip
