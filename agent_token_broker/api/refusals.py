"""The operator's view of refusals: a WARNING naming the setting that would allow the request.

A refusal of a configuration-gated feature (a :class:`ProblemError` with a ``config_key``)
is logged once per distinct cause per minute; repeats within the minute are counted and
reported with the next line for that cause. The table of causes is bounded, so a flood of
distinct API names cannot grow memory, and a global budget caps the lines per minute.
The line never holds request values: only the route, the problem's title (fixed phrases and
parameter *names*) and the configuration key.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from agent_token_broker.api.problems import ProblemError

log = logging.getLogger("agent_token_broker.api.refusals")

INTERVAL_SECONDS = 60.0
MAX_CAUSES = 1024
MAX_LINES_PER_INTERVAL = 100


class RefusalLog:
    """Rate-limited WARNING lines for gated refusals (see module docstring)."""

    def __init__(
        self,
        *,
        interval: float = INTERVAL_SECONDS,
        max_causes: int = MAX_CAUSES,
        max_lines: int = MAX_LINES_PER_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self._interval = interval
        self._max_causes = max_causes
        self._max_lines = max_lines
        self._clock = clock
        self._log = logger
        # cause -> (when last logged, refusals suppressed since)
        self._causes: OrderedDict[tuple[str, str, str, str], tuple[float, int]] = OrderedDict()
        self._window_start = clock()
        self._window_lines = 0

    def note(self, err: ProblemError, route: str) -> bool:
        """Log ``err`` if it is a gated refusal not logged in the last interval; True when logged."""
        key = err.config_key
        if key is None:
            return False
        now = self._clock()
        cause = (route, err.slug, err.title, key)
        seen = self._causes.get(cause)
        if seen is not None and now - seen[0] < self._interval:
            self._causes[cause] = (seen[0], seen[1] + 1)
            return False
        if now - self._window_start >= self._interval:
            self._window_start, self._window_lines = now, 0
        if self._window_lines >= self._max_lines:
            return False
        self._window_lines += 1
        suppressed = seen[1] if seen is not None else 0
        self._causes[cause] = (now, 0)
        self._causes.move_to_end(cause)
        while len(self._causes) > self._max_causes:
            self._causes.popitem(last=False)
        self._log.warning(
            "refused a request on %s (HTTP %d, %s); the setting that decides this is %s%s",
            route,
            err.status,
            err.title,
            key,
            f" ({suppressed} more like it since the last such line)" if suppressed else "",
        )
        return True
