"""Metric hooks of the shared cache, and an in-memory counting implementation.

``SharedCacheObserver`` is what a metrics module implements; the default
:class:`CountingObserver` keeps plain counters (shown by tests, diagnostics and
``/readyz`` detail) and forwards to an optional inner observer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

from agent_token_broker.cache.observer import NullObserver

__all__ = ["CountingObserver", "NullObserver", "SharedCacheObserver"]


class SharedCacheObserver(Protocol):
    def lookup(self, result: str) -> None:
        """An L2 read: ``hit``, ``miss``, ``unusable`` (expired/older than L1), ``bypass`` (forced)."""

    def rejected(self, reason: str) -> None:
        """A stored value that was not served: ``tampered``, ``unknown_key``, ``malformed``."""

    def lock(self, result: str) -> None:
        """Cross-replica single flight: ``acquired``, ``waited_hit``, ``waited_out``, ``unavailable``."""

    def write(self, result: str) -> None:
        """An L2 write: ``ok`` or ``failed``."""

    def error(self, op: str) -> None:
        """A Redis operation failed or timed out."""

    def skipped(self, op: str) -> None:
        """A Redis operation skipped because the circuit is open."""

    def breaker(self, state: str) -> None:
        """The circuit breaker changed state: ``closed``, ``open``, ``half_open``."""


class CountingObserver:
    """Counts every event as ``"<hook>:<label>"`` and forwards it to ``inner`` (every hook of
    :class:`SharedCacheObserver` takes one label)."""

    def __init__(self, inner: SharedCacheObserver | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self._inner: SharedCacheObserver = inner if inner is not None else NullObserver()

    def __getattr__(self, hook: str) -> Callable[[str], None]:
        if hook.startswith("_"):
            raise AttributeError(hook)
        forward: Callable[[str], None] = getattr(self._inner, hook)
        counts = self.counts

        def count(label: str) -> None:
            counts[f"{hook}:{label}"] += 1
            forward(label)

        return count
