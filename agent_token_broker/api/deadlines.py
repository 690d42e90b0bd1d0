"""Request deadlines without a timer per request.

``asyncio.timeout()`` arms (and disarms) a loop timer for every request: on the
cache-hit path that costs more than the rest of the guards together. Instead, a
request registers its task and start time in a dict, and one watchdog task per
app wakes a few times a second and cancels the requests past their deadline.
The guard turns such a cancellation into a 503 problem. Precision: the limit plus
at most one watchdog period.
"""

from __future__ import annotations

import asyncio
import contextlib

WATCHDOG_PERIOD_SECONDS = 0.25


class Deadlines:
    """Tracks in-flight request tasks and cancels those that overrun ``limit`` seconds."""

    def __init__(self, limit: float, *, period: float = WATCHDOG_PERIOD_SECONDS) -> None:
        self._base_period = period
        self.configure(limit)
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def configure(self, limit: float) -> None:
        """The limit of requests entering from now on (also on a reload); earlier ones keep theirs."""
        self.limit = limit
        self.period = min(self._base_period, limit)

    def enter(self, task: asyncio.Task[object], now: float) -> None:
        self._due[task] = now + self.limit

    def leave(self, task: asyncio.Task[object]) -> bool:
        """Forget ``task``; ``True`` if the watchdog cancelled it for overrunning."""
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="request-deadlines")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period)
            now = loop.time()
            for task, due in list(self._due.items()):
                if due <= now and task not in self._expired and not task.done():
                    self._expired.add(task)
                    task.cancel()
