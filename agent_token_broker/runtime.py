"""Composition root: builds the broker's parts from :class:`Settings` and owns their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import aiohttp

from agent_token_broker import logs, tracing
from agent_token_broker.audit import AuditTrail
from agent_token_broker.audit.metrics import register_audit_collector
from agent_token_broker.backoff import Backoff
from agent_token_broker.cache.engine import TokenCache
from agent_token_broker.credentials import build_sources
from agent_token_broker.entra.legs import EntraLegs
from agent_token_broker.l2 import SharedTokenCache, build_shared_cache
from agent_token_broker.l2.metrics import SharedCacheMetrics
from agent_token_broker.logs import set_level
from agent_token_broker.metrics import BrokerMetrics
from agent_token_broker.msal_http import UpstreamHttp
from agent_token_broker.outbound import OutboundSessions
from agent_token_broker.readiness import Readiness, ReadinessState, UpstreamMonitor
from agent_token_broker.reload import APPLIED, RESTART_REQUIRED, UNCHANGED, ReloadReport
from agent_token_broker.settings import DownstreamApiConfig, Settings
from agent_token_broker.settings.changes import changes, in_force
from agent_token_broker.tokens import TokenService
from agent_token_broker.tracing import Tracer
from agent_token_broker.trust import TrustStore
from agent_token_broker.validation import InboundValidator

log = logging.getLogger("agent_token_broker")
PROBE_GRANT = "urn:agent-token-broker:readiness-probe"
# Called with (old, new) when a reload puts new settings in force; see Runtime.on_settings_change.
SettingsListener = Callable[[Settings, Settings], None]


@dataclass
class Runtime:
    """Everything a running broker holds; reachable from the aiohttp apps via ``RUNTIME``."""

    settings: Settings
    legs: EntraLegs
    cache: TokenCache
    tokens: TokenService
    validator: InboundValidator
    outbound: OutboundSessions
    trust: TrustStore
    metrics: BrokerMetrics
    readiness: Readiness
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    shared_cache: SharedTokenCache | None = None  # optional Redis L2 (Broker__Cache__Redis__*)
    audit: AuditTrail | None = None  # the audit trail of token decisions (Broker__Audit__*)
    tracer: Tracer | None = None  # OpenTelemetry, when Broker__Tracing__Enabled (agent_token_broker.tracing)

    background: list[asyncio.Task[None]] = field(default_factory=list)
    # What derived state from the settings: told when a reload changes them (see apply_settings).
    settings_listeners: list[SettingsListener] = field(default_factory=list)
    # Changed keys the last reload could not apply (they need a restart); running values kept.
    restart_pending: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.on_settings_change(self._settings_changed)

    def on_settings_change(self, listener: SettingsListener) -> None:
        """Register ``listener(old, new)``, called on the event loop when a reload puts new settings
        in force. Whatever caches something computed from the settings (a memo of decisions, a
        parsed allow-list, a limiter's rates) registers here and rebuilds or drops it; listeners
        must not block and must not fail."""
        self.settings_listeners.append(listener)

    def apply_settings(self, new: Settings) -> ReloadReport:
        """Put ``new``'s live keys in force (one swap of the immutable settings, then the listeners,
        with no await between: a request sees the old settings or the new ones, never a mix).

        Keys that need a restart keep their running values and are named in the report; the
        token cache is kept. ``new`` must be a validated configuration (``load_settings``).
        """
        old = self.settings
        found = changes(old, new)
        applied = tuple(c.key for c in found if c.live)
        self.restart_pending = tuple(c.key for c in found if not c.live)
        if not applied:
            return ReloadReport(RESTART_REQUIRED if self.restart_pending else UNCHANGED, restart=self.restart_pending)
        self.settings = in_force(old, new)
        for listener in self.settings_listeners:
            try:
                listener(old, self.settings)
            except Exception as exc:  # a bug: say so, keep applying the rest
                log.error("reload: %r failed to apply the new settings (%s)", listener, type(exc).__name__)
        return ReloadReport(APPLIED, applied=applied, restart=self.restart_pending)

    def _settings_changed(self, old: Settings, new: Settings) -> None:
        if new.log_level != old.log_level:
            set_level(new.log_level)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session for downstream API calls (its own pool; see :mod:`agent_token_broker.outbound`)."""
        return self.outbound.downstream

    def downstream_api(self, name: str) -> DownstreamApiConfig | None:
        return self.settings.downstream_apis.get(name)

    @classmethod
    async def create(
        cls, settings: Settings, env: Mapping[str, str] | None = None, *, tracer: Tracer | None = None
    ) -> Runtime:
        """Build every part. :raises ConfigError: e.g. a trust variable names a missing CA bundle, or
        tracing is on without the otel extra. ``tracer``: use this one instead of the one the
        settings and ``OTEL_*`` variables describe (tests)."""
        if tracer is None:
            tracer = tracing.start(settings)
        ad = settings.azure_ad
        up = settings.upstream
        trust = TrustStore(env)
        http = UpstreamHttp(
            connect_timeout=up.connect_timeout_seconds,
            read_timeout=up.read_timeout_seconds,
            pool_size=up.max_concurrency,
            ssl_context=trust.new_context(),
        )
        trust.subscribe(lambda: http.use_ssl_context(trust.new_context()))
        sources = build_sources(ad, http_session=http.session)
        legs = EntraLegs(
            blueprint_id=ad.client_id,
            tenant_id=ad.tenant_id,
            instance=ad.instance,
            sources=sources,
            http=http,
            max_workers=up.max_concurrency,
            max_agent_apps=settings.cache.max_agent_clients,
        )
        metrics = BrokerMetrics()
        monitor = UpstreamMonitor(metrics)
        legs.observer = monitor
        legs.tracer = tracer
        logs.set_trace_ids(tracing.trace_ids_hook(tracer))
        cache = TokenCache(settings.cache, observer=metrics)
        outbound = OutboundSessions(
            trust,
            connect_timeout=up.connect_timeout_seconds,
            read_timeout=up.read_timeout_seconds,
            downstream_connections=settings.downstream.max_connections,
            retire_after=settings.downstream.timeout_seconds + up.read_timeout_seconds + 5.0,
        )
        validator = InboundValidator(
            authority=ad.authority, tenant_id=ad.tenant_id, audiences=ad.audiences, session=lambda: outbound.entra
        )

        async def probe_authority() -> bool:
            return await authority_answers(outbound.entra, ad.instance, ad.tenant_id, up.read_timeout_seconds)

        async def probe_credential() -> bool:
            return await legs.warm_up() is None

        readiness = Readiness(
            cache, monitor, probe_authority=probe_authority, probe_credential=probe_credential
        )
        metrics.next_expiry = cache.next_expiry
        metrics.credential_ready = lambda: legs.credential_ok and monitor.credential_up
        metrics.authority_ready = lambda: legs.authority_ok and monitor.authority_up
        metrics.ready = lambda: readiness.ready
        shared = None
        if settings.cache.redis is not None:
            shared = build_shared_cache(
                settings.cache.redis,
                cache.policy,
                namespace=ad.client_id,
                observer=SharedCacheMetrics(metrics.registry),
            )
            shared.start()
        audit = AuditTrail(settings.audit)
        audit.start()
        runtime: Runtime | None = None
        register_audit_collector(
            metrics.registry, audit, lambda: runtime.settings.security.callers if runtime is not None else ()
        )
        runtime = cls(
            settings=settings,
            legs=legs,
            cache=cache,
            tokens=TokenService(legs, cache, shared),
            validator=validator,
            outbound=outbound,
            trust=trust,
            metrics=metrics,
            readiness=readiness,
            shared_cache=shared,
            audit=audit,
            tracer=tracer,
            background=[asyncio.get_running_loop().create_task(trust.watch(), name="trust-watch")],
        )
        return runtime

    def readiness_state(self) -> ReadinessState:
        state = self.readiness.state()
        note = self.shared_cache.health_note() if self.shared_cache is not None else None
        return replace(state, detail=f"{state.detail}; {note}") if note else state

    async def warm_up(self) -> None:
        """Readiness: a credential produced an assertion and the authority answered (retried until so)."""
        backoff = Backoff(1.0, 30.0)
        while True:
            problem = await self.legs.warm_up()
            if problem is None:
                try:
                    await self.validator.prefetch()
                except Exception as exc:
                    problem = f"authority signing keys unavailable ({type(exc).__name__})"
            if problem is None:
                self.readiness.started = True
                self.ready_event.set()
                log.info("broker ready: blueprint credential and authority OK")
                await self.readiness.run()  # keeps probing while degraded, until cancelled
                return
            self.readiness.startup_detail = problem
            delay = backoff.next()
            log.warning("not ready yet: %s (retrying in %.0fs)", problem, delay)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.cache.aclose()
        if self.audit is not None:
            await self.audit.close()
        if self.shared_cache is not None:
            await self.shared_cache.aclose()
        await self.validator.aclose()
        await self.outbound.close()
        self.legs.close()
        if self.tracer is not None:
            logs.set_trace_ids(None)
            await asyncio.get_running_loop().run_in_executor(None, self.tracer.shutdown)


async def authority_answers(
    session: aiohttp.ClientSession, instance: str, tenant: str, seconds: float
) -> bool:
    """True when the tenant's token endpoint answers at all (below HTTP 500).

    The probe carries no credential and an unknown grant type, so a live authority
    refuses it with HTTP 400 and no token is issued.
    """
    url = f"{instance.rstrip('/')}/{tenant}/oauth2/v2.0/token"
    try:
        async with session.post(
            url, data={"grant_type": PROBE_GRANT}, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as resp:
            await resp.read()
            return resp.status < 500
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False
