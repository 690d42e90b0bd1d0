"""Prometheus metrics of the shared cache, registered in the broker's own registry.

Labels are bounded: results, reasons, operation names and breaker states only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["SharedCacheMetrics"]

PREFIX = "agent_token_broker_shared_cache"
_STATES = ("closed", "open", "half_open")


class SharedCacheMetrics:
    """A :class:`~agent_token_broker.l2.observer.SharedCacheObserver` writing Prometheus series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._lookups = Counter(
            f"{PREFIX}_lookups", "Shared (Redis) cache reads by result.", ["result"], registry=r
        )
        self._rejected = Counter(
            f"{PREFIX}_rejected_values",
            "Stored values not served: tampered, unknown_key (not decryptable), malformed, revoked "
            "(written before a revocation: e.g. an old value put back), epoch_rollback (epoch records "
            "deleted or rolled back), bad_epoch (an epoch record is not a number).",
            ["reason"], registry=r,
        )  # fmt: skip
        self._locks = Counter(
            f"{PREFIX}_locks", "Cross-replica single-flight outcomes.", ["result"], registry=r
        )
        self._writes = Counter(f"{PREFIX}_writes", "Shared cache writes by result.", ["result"], registry=r)
        self._errors = Counter(
            f"{PREFIX}_errors", "Redis operations failed or timed out.", ["op"], registry=r
        )
        self._skipped = Counter(
            f"{PREFIX}_skipped", "Redis operations skipped while the circuit is open.", ["op"], registry=r
        )
        self._state = Gauge(
            f"{PREFIX}_circuit_state", "1 for the circuit breaker's current state.", ["state"], registry=r
        )
        for result in ("hit", "miss", "unusable", "bypass"):
            self._lookups.labels(result)
        for reason in ("tampered", "unknown_key", "malformed", "revoked", "epoch_rollback", "bad_epoch"):
            self._rejected.labels(reason)
        for state in _STATES:
            self._state.labels(state).set(1 if state == "closed" else 0)

    def lookup(self, result: str) -> None:
        self._lookups.labels(result).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def lock(self, result: str) -> None:
        self._locks.labels(result).inc()

    def write(self, result: str) -> None:
        self._writes.labels(result).inc()

    def error(self, op: str) -> None:
        self._errors.labels(op).inc()

    def skipped(self, op: str) -> None:
        self._skipped.labels(op).inc()

    def breaker(self, state: str) -> None:
        for name in _STATES:
            self._state.labels(name).set(1 if name == state else 0)
