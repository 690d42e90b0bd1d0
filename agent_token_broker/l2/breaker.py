"""A small circuit breaker: closed -> open after N consecutive failures -> half-open probe."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures; while open, :meth:`allow` refuses until ``open_seconds`` pass.

    Then one caller gets a probe (half-open); its success closes the breaker, its
    failure opens it again. ``on_change(state)`` is called on every transition.
    """

    def __init__(
        self,
        threshold: int,
        open_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def allow(self) -> bool:
        """May a Redis operation run now? (Claims the probe slot when half-open.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock() - self._opened_at >= self.open_seconds:
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self._probing = False
        self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)
