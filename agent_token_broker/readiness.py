"""Readiness: can this broker serve tokens right now?

* Not ready until warm-up succeeded: a blueprint credential produced an
  assertion and the authority answered (``Runtime.warm_up``).
* Then ready while the authority answers. When an upstream call finds it
  unreachable (connection failure, timeout, HTTP 5xx) or the credential fails,
  the broker stays ready only while it holds valid cached tokens to serve
  (``detail`` says ``degraded``), and is not ready when it holds none.
* Recovery does not depend on traffic: while degraded, a monitor probes the
  authority (a token-endpoint request without credentials, which any live Entra
  answers with HTTP 400) and the credential, with backoff, and flips back.

:class:`UpstreamMonitor` is the Entra legs' upstream observer: it forwards to
the metrics and records the authority's health; it also logs each upstream call
with its leg, outcome and Entra correlation id (never tokens), and each identity
revocation with its cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent_token_broker.backoff import Backoff
from agent_token_broker.cache.engine import TokenCache
from agent_token_broker.cache.token import AcquireError
from agent_token_broker.entra.revocation import Revocation
from agent_token_broker.metrics import BrokerMetrics, upstream_outcome
from agent_token_broker.msal_http import call_state

log = logging.getLogger("agent_token_broker.upstream")
AUTHORITY_DOWN = frozenset({"unreachable", "server_error"})
Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class ReadinessState:
    ready: bool
    detail: str
    servable_tokens: int | None = None


class UpstreamMonitor:
    """Upstream observer for :class:`~agent_token_broker.entra.legs.EntraLegs` (called from worker threads)."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._metrics = metrics
        self.authority_up = True
        self.credential_up = True

    def upstream_started(self, leg: str) -> None:
        self._metrics.upstream_started(leg)

    def upstream_finished(self, leg: str, error: AcquireError | None, seconds: float) -> None:
        self._metrics.upstream_finished(leg, error, seconds)
        outcome = upstream_outcome(error)
        state = call_state()
        fields = {
            "leg": leg,
            "outcome": outcome,
            "duration_ms": round(seconds * 1000, 1),
            "upstream_status": state.status,
            "correlation_id": state.response_correlation_id,
        }
        if error is None:
            self.authority_up = self.credential_up = True
            log.debug("upstream %s token request succeeded", leg, extra=fields)
            return
        if outcome == "credential_error":
            self.credential_up = False
        elif outcome in AUTHORITY_DOWN:
            self.authority_up = False
        else:
            self.authority_up = True  # the authority answered (refused or throttled)
        fields["error_code"] = error.error_code
        log.warning("upstream %s token request failed: %s", leg, error, extra=fields)

    def identity_revoked(self, leg: str, revocation: Revocation) -> None:
        """Entra refused an identity itself: say which, where and why (never a token)."""
        self._metrics.identity_revoked(revocation.kind, revocation.cause)
        log.warning(
            "revoking the cached tokens of %s %s in tenant %s: Entra answered %s (%s) on the %s leg",
            "agent identity" if revocation.kind == "agent" else "blueprint",
            revocation.identity,
            revocation.tenant,
            revocation.code,
            revocation.cause,
            leg,
            extra={"leg": leg, "error_code": revocation.code, "outcome": "revoked"},
        )


class Readiness:
    """Answers ``/readyz`` and keeps probing while degraded."""

    def __init__(
        self,
        cache: TokenCache,
        monitor: UpstreamMonitor,
        *,
        probe_authority: Probe,
        probe_credential: Probe,
        probe_interval: float = 1.0,
        probe_interval_cap: float = 10.0,
    ) -> None:
        self._cache = cache
        self.monitor = monitor
        self._probe_authority = probe_authority
        self._probe_credential = probe_credential
        self._interval = probe_interval
        self._cap = probe_interval_cap
        self.started = False
        self.startup_detail = "starting"

    def state(self) -> ReadinessState:
        if not self.started:
            return ReadinessState(False, self.startup_detail)
        problems = []
        if not self.monitor.authority_up:
            problems.append("authority unreachable")
        if not self.monitor.credential_up:
            problems.append("blueprint credential unavailable")
        if not problems:
            return ReadinessState(True, "ready")
        count = self._cache.servable_count(time.time())  # a scan, only while degraded
        why = " and ".join(problems)
        if count:
            return ReadinessState(True, f"degraded: {why}; serving cached tokens", count)
        return ReadinessState(False, f"{why} and no valid cached token", 0)

    @property
    def ready(self) -> bool:
        return self.state().ready

    async def _probe_once(self) -> None:
        if not self.monitor.authority_up and await self._probe_authority():
            log.info("authority answers again")
            self.monitor.authority_up = True
        if not self.monitor.credential_up and await self._probe_credential():
            log.info("blueprint credential produces assertions again")
            self.monitor.credential_up = True

    async def run(self) -> None:
        """Probe the authority/credential with backoff while degraded (runs until cancelled)."""
        backoff = Backoff(self._interval, self._cap)
        while True:
            if self.monitor.authority_up and self.monitor.credential_up:
                backoff.reset()
                await asyncio.sleep(self._interval)
                continue
            try:
                await self._probe_once()
            except Exception as exc:  # a probe must never kill the monitor
                log.warning("readiness probe failed: %s", type(exc).__name__)
            if self.monitor.authority_up and self.monitor.credential_up:
                continue
            await backoff.sleep()
