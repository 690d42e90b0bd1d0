"""Hooks the cache calls so metrics can count what it does (no Prometheus here), and the
broker's one null observer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["CacheObserver", "NullObserver"]


class CacheObserver(Protocol):
    """Receives cache events. Calls are synchronous and must be cheap.

    * ``lookup(result)``: once per ``get()`` call, and once per ``peek()`` hit
      (a ``peek()`` miss is followed by a ``get()``, which counts it).
      ``"hit" | "miss" | "stale" | "coalesced" | "negative"``.
    * ``refresh(outcome)``: once per finished acquisition and per idle skip.
      ``"success" | "transient_error" | "definitive_error" | "skipped_idle"``.
    * ``evicted(reason, count)``: ``"lru" | "revoked" | "expired" | "admin"``.
    * ``entries(count)``: number of keys after a change.
    """

    def lookup(self, result: str) -> None: ...

    def refresh(self, outcome: str) -> None: ...

    def evicted(self, reason: str, count: int) -> None: ...

    def entries(self, count: int) -> None: ...


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None


class NullObserver:
    """Ignores every hook: the default of each observer the broker has (the cache's, the
    shared cache's, the Entra legs' upstream observer)."""

    __slots__ = ()

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if hook.startswith("_"):  # not a hook (copy, pickle, introspection)
            raise AttributeError(hook)
        return _ignore
