"""Structured logs: one JSON object per line on stderr, with request and correlation ids.

* ``request_id`` comes from :data:`REQUEST_ID` (set per API request by
  ``agent_token_broker/api/observe.py``) and is added to every record logged in that
  request's context by :class:`ContextFilter`.
* Entra correlation ids travel as the ``correlation_id`` record attribute
  (``log.info(..., extra={"correlation_id": ...})``).
* Defence in depth: anything shaped like a JWT in a message is replaced by
  ``<redacted-jwt>`` and tracebacks are reduced to the exception type (an unexpected
  500 adds ``frames``: where it was raised, ``file:line:function``, never values).
  Code must still never log tokens, assertions or secrets in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TextIO

OFF = logging.CRITICAL + 10  # Microsoft's "None": nothing is logged
logging.addLevelName(OFF, "NONE")
# The one table of level names: Microsoft.Extensions.Logging's and Python's, lower-cased.
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "information": logging.INFO,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "none": OFF,
}
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
EXTRA_FIELDS = (
    "request_id",
    "correlation_id",
    "route",
    "status",
    "leg",
    "outcome",
    "upstream_status",
    "error_code",
    "duration_ms",
    "frames",
)
# ``(trace_id, span_id)`` of the current span when tracing is on (set by the runtime); None: off.
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def set_trace_ids(hook: Callable[[], tuple[str, str] | None] | None) -> None:
    """Where log lines get their ``trace_id``/``span_id`` (None: tracing is off)."""
    global _trace_ids
    _trace_ids = hook


_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    """Replace JWT-shaped substrings (tokens, assertions) with a marker."""
    return _JWT.sub("<redacted-jwt>", text) if "eyJ" in text else text


class ContextFilter(logging.Filter):
    """Adds the current request id to records that do not carry one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in EXTRA_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = redact(value) if isinstance(value, str) else value
        hook = _trace_ids
        if hook is not None and "trace_id" not in entry:
            ids = hook()
            if ids is not None:
                entry["trace_id"], entry["span_id"] = ids
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry)


def setup_logging(level: str, *, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger; ``level`` accepts Python and Microsoft names. Returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logging.getLogger().handlers[:] = [handler]
    set_level(level)
    return handler


def set_level(level: str) -> None:
    """Set the root level (Python or Microsoft name); also at start-up and on a reload."""
    root = logging.getLogger()
    root.setLevel(LEVELS.get(level.strip().lower(), logging.INFO))
    # MSAL and urllib3 log request details at DEBUG; keep them quiet unless asked for.
    for noisy in ("msal", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
