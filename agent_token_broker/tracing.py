"""Traces, optional: the broker's side of OpenTelemetry, without importing it.

With ``Broker__Tracing__Enabled=true`` :func:`start` imports :mod:`agent_token_broker.otel` (which
imports OpenTelemetry, the ``otel`` extra) and returns its :class:`Tracer`. Off (the default), it
returns None, nothing of OpenTelemetry is imported, and every call site pays one ``is None`` test.

Call sites: a server span per API request (``api/observe.py``, continuing the caller's W3C
``traceparent``), a client span per Entra leg (``entra/legs.py``, in the leg's worker thread, which
runs in a copy of the request's context) and per downstream call (``api/downstream_http.py``,
which also sends ``traceparent``); trace ids on log lines (``logs.py``) and audit lines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Protocol

from agent_token_broker.settings import ConfigError, Settings
from agent_token_broker.settings.callers import OTEL_MISSING


class Span(Protocol):
    """What call sites may do with a span: attributes (never a token), and mark it failed."""

    def set(self, key: str, value: str | int | float | bool) -> None: ...

    def fail(self, description: str) -> None: ...


class Tracer(Protocol):
    def server(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[Span]:
        """A server span ``name`` continuing the trace of ``headers``' ``traceparent``, if any."""
        ...

    def client(self, name: str) -> AbstractContextManager[Span]:
        """A client span ``name``, child of the current span."""
        ...

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add ``traceparent`` (and ``tracestate``) of the current span to outgoing ``headers``."""
        ...

    def ids(self) -> tuple[str, str] | None:
        """``(trace_id, span_id)`` of the current span, as 32 and 16 hex digits, or None."""
        ...

    def shutdown(self) -> None:
        """Export what is pending and stop."""
        ...


def start(settings: Settings, env: Mapping[str, str] | None = None) -> Tracer | None:
    """The tracer ``settings`` ask for (None when tracing is off: OpenTelemetry is then never imported).

    :raises ConfigError: tracing is on but the ``otel`` extra is not installed, or ``OTEL_*``
        variables ask for what it cannot do.
    """
    if not settings.tracing.enabled:
        return None
    try:
        from agent_token_broker import otel  # the optional extra: imported only here
    except ImportError:
        raise ConfigError([f"Broker__Tracing__Enabled: {OTEL_MISSING}"]) from None
    return otel.from_environment(env)


def trace_ids_hook(tracer: Tracer | None) -> Callable[[], tuple[str, str] | None] | None:
    """What :mod:`agent_token_broker.logs` calls per record for its ``trace_id``/``span_id``."""
    return tracer.ids if tracer is not None else None
