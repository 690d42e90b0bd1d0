"""Schedule: every entry's one timer, as a record in one heap, and one loop timer for the heap.

A loop timer per key cost about 600 bytes (uvloop: a ``TimerHandle``, its ``UVTimer`` and libuv
handle, a bound method, an argument tuple and a copied context) and five GC-tracked objects: at
200,000 cached tokens, more memory than the tokens' own metadata. Here an armed entry costs one
``(due, entry)`` tuple in a heap (about 90 bytes), and the loop has one timer, at the earliest
due time.

Disarming only forgets the record (``entry.timer = None``); the stale tuple stays in the heap
until its time comes or the heap is compacted (when stale records outnumber live ones), so the
heap never holds more than about twice the armed entries. Due records are handed to ``fire``
in batches (:data:`BATCH` per loop iteration), so a thousand refreshes due in the same second
do not hold the event loop for all of them at once.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_token_broker.cache.entry import KeyEntry

__all__ = ["BATCH", "Schedule"]

BATCH = 256  # due records handled per loop iteration
_INF = float("inf")
_SLACK = 64  # stale records tolerated before a compaction, beyond as many as there are live ones


class Schedule:
    """Due times (on the cache's ``clock``) of entries, and the loop timer that fires them.

    ``fire(entry)`` is called on the event loop once ``clock() >= due`` for the entry's current
    record (a record replaced or disarmed since is skipped). Must be used on the loop's thread.
    """

    def __init__(self, clock: Callable[[], float], fire: Callable[[KeyEntry], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._heap: list[tuple[float, KeyEntry]] = []
        self._live = 0
        self._handle: asyncio.TimerHandle | None = None
        self._handle_due = _INF
        self._closed = False

    def __len__(self) -> int:
        """Armed entries (live records)."""
        return self._live

    @property
    def records(self) -> int:
        """Records in the heap, live and stale (bounded by ``2 * len(self) + 64``)."""
        return len(self._heap)

    def live_records(self) -> int:
        """Records in the heap that are still an entry's timer (O(n), for leak checks)."""
        return sum(1 for record in self._heap if record[1].timer is record)

    @property
    def loop_timers(self) -> int:
        """Loop timers pending for this schedule: 0 or 1."""
        return 0 if self._handle is None or self._handle.cancelled() else 1

    def arm(self, entry: KeyEntry, due: float) -> None:
        """``entry``'s one timer fires at ``due`` (replacing any it had)."""
        if self._closed:
            return
        if entry.timer is None:
            self._live += 1
        record = (due, entry)
        entry.timer = record
        heapq.heappush(self._heap, record)
        if due < self._handle_due:
            self._wake(due)
        if len(self._heap) > 2 * self._live + _SLACK:
            self._compact()

    def disarm(self, entry: KeyEntry) -> None:
        if entry.timer is not None:
            entry.timer = None
            self._live -= 1

    def close(self) -> None:
        """No more firing: the loop timer is cancelled and the records dropped (entries disarmed)."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for _due, entry in self._heap:
            entry.timer = None
        self._heap.clear()
        self._live = 0

    def _compact(self) -> None:
        self._heap = [record for record in self._heap if record[1].timer is record]
        heapq.heapify(self._heap)

    def _wake(self, due: float) -> None:
        """Arm the loop timer for ``due`` (cache clock), replacing the one armed."""
        if self._handle is not None:
            self._handle.cancel()
        delay = max(0.0, due - self._clock())
        self._handle = asyncio.get_running_loop().call_later(delay, self._run)
        self._handle_due = due

    def _run(self) -> None:
        self._handle = None
        self._handle_due = _INF
        if self._closed:
            return
        heap = self._heap
        now = self._clock()
        done = 0
        while heap and done < BATCH:
            record = heap[0]
            entry = record[1]
            if entry.timer is not record:  # replaced or disarmed: drop the stale record
                heapq.heappop(heap)
                continue
            if record[0] > now:
                break
            heapq.heappop(heap)
            entry.timer = None
            self._live -= 1
            done += 1
            self._fire(entry)  # may arm the entry again
        if self._closed or not heap:
            return
        # the earliest record (a live one: stale ones above it were dropped), or, after a full
        # batch, the rest of the due ones on the next loop iteration (I/O runs in between)
        target = now if done >= BATCH else heap[0][0]
        if target < self._handle_due:  # ``fire`` may have armed the loop timer for a later time
            self._wake(target)
