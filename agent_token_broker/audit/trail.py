"""The audit trail: one JSON line per token decision on the ``agent_token_broker.audit`` logger.

Misses, refusals and errors are written as they happen. Cache hits, the hot path, are counted
per (caller, uid, agent, API, flow) in a dict and written as one ``hits`` line per key per
``Broker__Audit__HitIntervalSeconds`` (``Hits=aggregate``, the default), or one line each
(``every``), or not at all (``off``; still counted for metrics).

Lines leave the event loop through a bounded queue to a writer thread (standard output, or
``Broker__Audit__File`` rotated by size), so a slow disk or a blocked pipe never stalls a
request; when the queue is full a line is dropped and counted (``agent_token_broker_audit_dropped_total``).
The logger is the trail's own (not the root's handlers), named ``agent_token_broker.audit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from agent_token_broker.audit.record import HitKey, hits_record
from agent_token_broker.settings.callers import AuditConfig

LOGGER_NAME = "agent_token_broker.audit"
QUEUE_LINES = 10_000
FLUSH_BATCH = 256  # hit lines written per event-loop iteration when a window closes
OUTCOMES = ("hit", "issued", "refused", "error")


class _BoundedQueueHandler(logging.handlers.QueueHandler):
    """A queue handler that drops (and counts) lines when its queue is full instead of blocking."""

    def __init__(self, q: queue.Queue[Any]) -> None:
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # the message is already the JSON line; no formatting or copying here

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def _sink(config: AuditConfig) -> logging.Handler:
    handler: logging.Handler
    if config.file is not None:
        handler = logging.handlers.RotatingFileHandler(
            config.file, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


class AuditTrail:
    """Writes audit lines and aggregates hits (see the module docstring). One per broker."""

    def __init__(self, config: AuditConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.hits: dict[HitKey, int] = {}  # the current window
        self.window_start = clock()
        # Totals per (caller label, outcome) for metrics; hits are added when a window closes.
        self.totals: dict[tuple[str, str], int] = {}
        self.every_hit = config.enabled and config.hits == "every"
        self.counting = config.enabled  # off: hits are neither written nor counted
        self.logger = logging.Logger(LOGGER_NAME, logging.INFO)  # the trail's own, not the root's
        self.logger.propagate = False
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_LINES)
        self._handler = _BoundedQueueHandler(self._queue)
        self._listener: logging.handlers.QueueListener | None = None
        self._sink: logging.Handler | None = None
        self._task: asyncio.Task[None] | None = None
        if config.enabled:
            self._sink = _sink(config)
            self.logger.addHandler(self._handler)
            self._listener = logging.handlers.QueueListener(self._queue, self._sink)
            self._listener.start()

    @property
    def dropped(self) -> int:
        return self._handler.dropped

    # -- writing -----------------------------------------------------------------------------------
    def write(self, record: dict[str, Any]) -> None:
        """Write one record as a JSON line (when the trail is enabled)."""
        if self._listener is not None:
            self.logger.info(json.dumps(record, separators=(",", ":")))

    def decision(self, record: dict[str, Any], caller: str, outcome: str) -> None:
        """A miss, refusal or error: written now, counted under ``(caller, outcome)``."""
        key = (caller, outcome)
        self.totals[key] = self.totals.get(key, 0) + 1
        self.write(record)

    def hit(self, key: HitKey) -> None:
        """Count one cache hit of ``key`` (the hot path: one dict update)."""
        hits = self.hits
        hits[key] = hits.get(key, 0) + 1

    def pending_hits(self) -> dict[str, int]:
        """Hits of the open window per caller label (for a metrics scrape between windows)."""
        out: dict[str, int] = {}
        for key, count in self.hits.items():
            out[key[0]] = out.get(key[0], 0) + count
        return out

    def flush(self) -> int:
        """Close the hit window: one ``hits`` line per key (``aggregate``); returns the lines written."""
        return sum(self._write_hits(batch, since, until) for batch, since, until in self._close_window())

    def _close_window(self) -> Iterator[tuple[list[tuple[HitKey, int]], float, float]]:
        """The closed window's hits in batches of :data:`FLUSH_BATCH` keys (with its bounds)."""
        hits, self.hits = self.hits, {}
        since, until = self.window_start, self.clock()
        self.window_start = until
        items = list(hits.items())
        for start in range(0, len(items), FLUSH_BATCH):
            yield items[start : start + FLUSH_BATCH], since, until

    def _write_hits(self, batch: list[tuple[HitKey, int]], since: float, until: float) -> int:
        written = 0
        aggregate = self.config.hits == "aggregate"
        for key, count in batch:
            total = (key[0], "hit")
            self.totals[total] = self.totals.get(total, 0) + count
            if aggregate:
                self.write(hits_record(key, count, since=since, until=until))
                written += 1
        return written

    async def flush_async(self) -> int:
        """:meth:`flush` a batch per event-loop iteration: a window of 100,000 keys is seconds of JSON,
        which must not stall the requests in between."""
        written = 0
        for batch, since, until in self._close_window():
            written += self._write_hits(batch, since, until)
            await asyncio.sleep(0)
        return written

    # -- lifetime ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the periodic hit flush (on the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-hits")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.hit_interval_seconds)
            await self.flush_async()

    async def close(self) -> None:
        """Write the last hit window and every queued line; stop the writer thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await asyncio.get_running_loop().run_in_executor(None, listener.stop)
            self.logger.removeHandler(self._handler)
            if self._sink is not None:
                self._sink.close()
