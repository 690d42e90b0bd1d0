"""Capped exponential backoff: the one doubling rule of the broker's retry and poll loops.

:class:`Backoff` paces the loops that wait for something outside (start-up warm-up,
readiness probes while degraded, the shared cache's lock poll); the token cache's per-key
retries use :func:`ceiling` with full jitter (``cache/policy.py``).
"""

from __future__ import annotations

import asyncio

__all__ = ["Backoff", "ceiling"]


def ceiling(attempt: int, first: float, cap: float) -> float:
    """``min(cap, first * 2**(attempt-1))`` for ``attempt`` = 1, 2, ... (no overflow)."""
    exponent = min(max(attempt, 1) - 1, 62)
    return min(cap, first * float(2**exponent))


class Backoff:
    """Delays ``first``, ``2*first``, ``4*first``, ... up to ``cap``; :meth:`reset` starts over."""

    __slots__ = ("_attempt", "cap", "first")

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._attempt = 0

    def next(self) -> float:
        """The next delay (and count it)."""
        self._attempt += 1
        return ceiling(self._attempt, self.first, self.cap)

    def reset(self) -> None:
        self._attempt = 0

    async def sleep(self) -> None:
        """Sleep for the next delay."""
        await asyncio.sleep(self.next())
