"""OpenTelemetry behind :class:`agent_token_broker.tracing.Tracer` (the ``otel`` extra; imported only
when ``Broker__Tracing__Enabled=true``).

The broker's own tracer provider (the global one is left to the embedding process), W3C trace
context in and out, and the exporter the standard variables ask for: ``OTEL_TRACES_EXPORTER``
``otlp`` (default; OTLP over HTTP/protobuf, configured by ``OTEL_EXPORTER_OTLP_*`` as the SDK reads
them), ``console`` or ``none``; ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` as the SDK reads them. Only HTTP/protobuf is installed:
``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` is refused rather than silently sent over HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agent_token_broker import __version__
from agent_token_broker.settings import ConfigError

SERVICE_NAME = "agent-token-broker"
_PROPAGATOR = TraceContextTextMapPropagator()


class OtelSpan:
    """A span as :class:`agent_token_broker.tracing.Span`."""

    __slots__ = ("_span", "failed")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.failed = False

    def set(self, key: str, value: str | int | float | bool) -> None:
        self._span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        self.failed = True
        self._span.set_status(Status(StatusCode.ERROR, description))


class OtelTracer:
    """:class:`agent_token_broker.tracing.Tracer` on an OpenTelemetry SDK tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("agent_token_broker", __version__)

    @contextmanager
    def _span(self, name: str, kind: SpanKind, parent: Context | None = None) -> Iterator[OtelSpan]:
        # No exception events or messages on spans (a message could quote a request): the type only.
        with self._tracer.start_as_current_span(
            name, context=parent, kind=kind, record_exception=False, set_status_on_exception=False
        ) as span:
            handle = OtelSpan(span)
            try:
                yield handle
            except BaseException as exc:
                if not handle.failed:
                    handle.fail(type(exc).__name__)
                raise

    def server(self, name: str, headers: Mapping[str, str]) -> AbstractContextManager[OtelSpan]:
        return self._span(name, SpanKind.SERVER, _PROPAGATOR.extract(headers))

    def client(self, name: str) -> AbstractContextManager[OtelSpan]:
        return self._span(name, SpanKind.CLIENT)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        _PROPAGATOR.inject(headers)

    def ids(self) -> tuple[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    def shutdown(self) -> None:
        self.provider.shutdown()


def _resource(env: Mapping[str, str]) -> Resource:
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return Resource.create({} if named else {"service.name": SERVICE_NAME})


def with_exporter(exporter: SpanExporter, *, batch: bool = False) -> OtelTracer:
    """A tracer exporting to ``exporter`` (each span as it ends unless ``batch``)."""
    provider = TracerProvider(resource=_resource(os.environ))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return OtelTracer(provider)


def from_environment(env: Mapping[str, str] | None = None) -> OtelTracer:
    """The tracer the ``OTEL_*`` variables describe. :raises ConfigError: naming the variable."""
    env = os.environ if env is None else env
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name)
        if protocol:
            if protocol.strip().lower() != "http/protobuf":
                raise ConfigError([f"{name}: only http/protobuf is supported (the otel extra carries the OTLP/HTTP exporter), got {protocol!r}"])
            break
    kind = (env.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return with_exporter(OTLPSpanExporter(), batch=True)
    if kind == "console":
        return with_exporter(ConsoleSpanExporter(), batch=True)
    if kind == "none":
        return OtelTracer(TracerProvider(resource=_resource(env)))
    raise ConfigError([f"OTEL_TRACES_EXPORTER: expected otlp, console or none, got {kind!r}"])
