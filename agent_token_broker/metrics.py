"""Every Prometheus metric the broker exports, defined once, in a per-broker registry.

No module-level registry state: each :class:`BrokerMetrics` owns a
:class:`~prometheus_client.CollectorRegistry`, so several brokers can run in one
process (tests). Labels are bounded by construction: route templates, HTTP
status codes, leg names, outcomes, cache results and eviction reasons — never
agent ids, users, tenants, scopes or tokens. Every series of a known label value
exists (at 0) from startup. Hot paths use children bound once (``.labels()`` is
never called per request). The list with meanings is in ``docs/metrics.md``.
"""

from __future__ import annotations

import bisect
import itertools
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from agent_token_broker import __version__
from agent_token_broker.cache.token import AcquireError
from agent_token_broker.reload import RESULTS as RELOAD_RESULTS

PREFIX = "agent_token_broker"
UNMATCHED = "unmatched"
# Request latency: a cache hit answers in well under a millisecond; a cold token takes an upstream round trip.
REQUEST_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Status codes whose series exist from startup for every route (others appear when first answered).
KNOWN_STATUSES = (200, 400, 401, 403, 404, 500, 503)
LOOKUP_RESULTS = ("hit", "miss", "stale", "coalesced", "negative")
REFRESH_OUTCOMES = ("success", "transient_error", "definitive_error", "skipped_idle")
EVICTION_REASONS = ("lru", "revoked", "expired", "admin")
LEGS = ("t1", "t2", "app", "obo", "user_fic", "blueprint_app", "blueprint_obo")
UPSTREAM_OUTCOMES = ("success", "refused", "throttled", "server_error", "unreachable", "credential_error")
REVOKED_IDENTITIES = ("agent", "blueprint")
REVOCATION_CAUSES = ("disabled", "not_found", "credential_rejected")
OTHER = "other"


def upstream_outcome(err: AcquireError | None) -> str:
    """Bounded outcome label of one upstream call (``None`` = success)."""
    if err is None:
        return "success"
    if err.error_code == "credential_unavailable":
        return "credential_error"
    status = err.status
    if status == 429 or (err.transient and status is not None and status < 500):
        return "throttled"
    if status is not None and status >= 500:
        return "server_error"
    if err.transient:
        return "unreachable"
    return "refused"


class RouteChildren:
    """Request counts by status and a latency histogram for one route template.

    Plain integers updated on the event loop thread (the only writer; scrapes run on the
    same loop), exported by :class:`_RequestCollector` at scrape time. A prometheus_client
    Histogram takes a lock and scans its buckets in Python per observation: several
    microseconds on the cache-hit path; this is one ``bisect`` and two additions.
    """

    __slots__ = ("buckets", "by_status", "route", "sum")

    def __init__(self, route: str) -> None:
        self.route = route
        self.by_status: dict[int, int] = dict.fromkeys(KNOWN_STATUSES, 0)
        self.buckets = [0] * (len(REQUEST_BUCKETS) + 1)  # per bucket (not cumulative); last = +Inf
        self.sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        by_status = self.by_status
        if status in by_status:
            by_status[status] += 1
        else:
            # HTTP status codes are bounded (100-599): at most a few hundred series per route.
            status = status if 100 <= status <= 599 else 500
            by_status[status] = by_status.get(status, 0) + 1
        self.buckets[bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1
        self.sum += seconds


class _RequestCollector(Collector):
    """Exports every route's request counter and latency histogram."""

    def __init__(self, routes: dict[str, RouteChildren]) -> None:
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_http_requests", "API requests by route template and HTTP status.",
            labels=["route", "status"],
        )  # fmt: skip
        latency = HistogramMetricFamily(
            f"{PREFIX}_http_request_duration_seconds", "API request latency by route template.",
            labels=["route"],
        )  # fmt: skip
        bounds = [*(floatToGoString(b) for b in REQUEST_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
        for route, children in list(self._routes.items()):
            for status, count in sorted(children.by_status.items()):
                requests.add_metric([route, str(status)], count)
            cumulative = list(itertools.accumulate(children.buckets))
            latency.add_metric([route], list(zip(bounds, cumulative, strict=True)), children.sum)
        yield requests
        yield latency


class _LookupCollector(Collector):
    """Exports the cache lookup counters kept as plain integers (see ``BrokerMetrics.lookup``)."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_cache_lookups", "Token cache lookups by result.", labels=["result"]
        )
        for result, count in list(self._m._lookups.items()):
            family.add_metric([result], count)
        yield family


class _ScrapeTimeCollector(Collector):
    """Gauges computed when Prometheus scrapes (earliest hot-token expiry, readiness)."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        expiry = GaugeMetricFamily(
            f"{PREFIX}_token_earliest_expiry_seconds",
            "Seconds until the earliest expiry among tokens used since their last acquisition "
            "(absent when there is none).",
        )
        next_expiry = m.next_expiry() if m.next_expiry is not None else None
        if next_expiry is not None:
            expiry.add_metric([], next_expiry - time.time())
        yield expiry
        for name, probe, text in (
            ("credential_ready", m.credential_ready, "1 when a blueprint credential produced an assertion."),
            (
                "authority_ready",
                m.authority_ready,
                "1 when the authority answered the last time it was asked.",
            ),
            ("ready", m.ready, "1 when /readyz answers 200."),
        ):
            family = GaugeMetricFamily(f"{PREFIX}_{name}", text)
            family.add_metric([], 1.0 if probe is not None and probe() else 0.0)
            yield family


CONNECTION_LISTENERS = ("api", "ops")
# GuardStats.by_reason() in listeners.py: refused at accept (503), then closed by a timeout
CONNECTION_REASONS = ("connections", "peer", "descriptors", "header_timeout", "idle_timeout")


class _ConnectionCollector(Collector):
    """The listeners' connection guards' counts (plain integers kept by each guard), by listener
    (``api``, ``ops``) and reason."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_connections_closed",
            "Connections a listener refused (503: connections, peer, descriptors) or closed itself "
            "(header_timeout with a 408, idle_timeout), by listener and reason.",
            labels=["listener", "reason"],
        )
        counts = self._m.connection_counts()
        for listener in CONNECTION_LISTENERS:
            for reason in CONNECTION_REASONS:
                family.add_metric([listener, reason], counts.get(listener, {}).get(reason, 0))
        yield family


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """prometheus_client's process, GC and platform collectors (read at scrape time, no hot-path cost)."""
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)


class BrokerMetrics:
    """The broker's metrics. Also the cache's :class:`~agent_token_broker.cache.observer.CacheObserver`
    and the Entra legs' upstream observer.

    Args:
        routes: API route templates known at startup (their series start at 0).
        version: build version for ``agent_token_broker_build_info``.
    """

    def __init__(self, routes: Iterable[str] = (), *, version: str = __version__) -> None:
        # ``*_created`` series double the series count and Prometheus 2.x stores them as plain
        # gauges; this is a process-wide switch of prometheus_client (no registry state).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.cache_refreshes = Counter(
            f"{PREFIX}_cache_refreshes",
            "Finished token acquisitions (and idle skips) by outcome.", ["outcome"], registry=r,
        )  # fmt: skip
        self.cache_evictions = Counter(
            f"{PREFIX}_cache_evictions", "Cache keys evicted, by reason.", ["reason"], registry=r
        )
        self.cache_entries = Gauge(f"{PREFIX}_cache_entries", "Keys in the token cache.", registry=r)
        self.upstream_requests = Counter(
            f"{PREFIX}_upstream_requests", "Token requests to Entra by leg and outcome.",
            ["leg", "outcome"], registry=r,
        )  # fmt: skip
        self.upstream_seconds = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds", "Latency of token requests to Entra by leg.",
            ["leg"], buckets=UPSTREAM_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_in_flight = Gauge(
            f"{PREFIX}_upstream_in_flight", "Token requests to Entra currently running.", registry=r
        )
        self.identity_revocations = Counter(
            f"{PREFIX}_identity_revocations",
            "Entra refusals about an identity itself, each revoking its cached tokens in one tenant.",
            ["identity", "cause"], registry=r,
        )  # fmt: skip
        self.config_reloads = Counter(
            f"{PREFIX}_config_reloads", "Configuration reloads (SIGHUP or a changed --config file) by result.",
            ["result"], registry=r,
        )  # fmt: skip
        self.config_restart_pending = Gauge(
            f"{PREFIX}_config_restart_pending",
            "1 when the last reload found changed keys that need a restart (their running values are kept).",
            registry=r,
        )
        build = Gauge(
            f"{PREFIX}_build_info", "Build information (always 1).", ["version", "python"], registry=r
        )
        build.labels(version, platform.python_version()).set(1)
        # The standard process_* (CPU, memory, file descriptors, start time), python_gc_* and
        # python_info series, as prometheus_client's default registry has them, in ours.
        register_runtime_collectors(r)

        # Bound children (hot paths do one dict lookup and one inc()).
        self._routes: dict[str, RouteChildren] = {}
        for route in (*routes, UNMATCHED):
            self.route(route)
        r.register(_RequestCollector(self._routes))
        # Lookups happen on every request (event loop thread only): plain integers, exported
        # at scrape time by a collector (no lock, no Python bucket scan on the hot path).
        self._lookups: dict[str, int] = dict.fromkeys((*LOOKUP_RESULTS, OTHER), 0)
        r.register(_LookupCollector(self))
        self._refreshes = {k: self.cache_refreshes.labels(k) for k in (*REFRESH_OUTCOMES, OTHER)}
        self._evictions = {k: self.cache_evictions.labels(k) for k in (*EVICTION_REASONS, OTHER)}
        self._upstream = {
            (leg, o): self.upstream_requests.labels(leg, o)
            for leg in (*LEGS, OTHER) for o in UPSTREAM_OUTCOMES
        }  # fmt: skip
        self._upstream_seconds = {leg: self.upstream_seconds.labels(leg) for leg in (*LEGS, OTHER)}
        self._revocations = {
            (kind, cause): self.identity_revocations.labels(kind, cause)
            for kind in (*REVOKED_IDENTITIES, OTHER) for cause in (*REVOCATION_CAUSES, OTHER)
        }  # fmt: skip
        self._in_flight = self.upstream_in_flight
        self._reloads = {k: self.config_reloads.labels(k) for k in RELOAD_RESULTS}

        # Scrape-time sources, wired by the runtime.
        self.next_expiry: Callable[[], float | None] | None = None
        self.credential_ready: Callable[[], bool] | None = None
        self.authority_ready: Callable[[], bool] | None = None
        self.ready: Callable[[], bool] | None = None
        r.register(_ScrapeTimeCollector(self))
        # listener -> reason -> count, wired by the server (its connection guards).
        self.connection_counts: Callable[[], Mapping[str, Mapping[str, int]]] = dict
        r.register(_ConnectionCollector(self))

    def route(self, template: str) -> RouteChildren:
        """Bound children for a route template (created once)."""
        children = self._routes.get(template)
        if children is None:
            children = self._routes[template] = RouteChildren(template)
        return children

    def exposition(self) -> bytes:
        """The text exposition format of this broker's registry."""
        return generate_latest(self.registry)

    # -- CacheObserver -----------------------------------------------------------------------------

    def lookup(self, result: str) -> None:
        lookups = self._lookups
        if result in lookups:
            lookups[result] += 1
        else:
            lookups[OTHER] += 1

    def refresh(self, outcome: str) -> None:
        (self._refreshes.get(outcome) or self._refreshes[OTHER]).inc()

    def evicted(self, reason: str, count: int) -> None:
        (self._evictions.get(reason) or self._evictions[OTHER]).inc(count)

    def entries(self, count: int) -> None:
        self.cache_entries.set(count)

    def config_reloaded(self, result: str, *, restart_pending: bool) -> None:
        """One finished reload (``result``: one of :data:`agent_token_broker.reload.RESULTS`)."""
        self._reloads[result].inc()
        self.config_restart_pending.set(1 if restart_pending else 0)

    # -- upstream observer (called from MSAL worker threads; prometheus_client is thread-safe) -----

    def upstream_started(self, leg: str) -> None:
        self._in_flight.inc()

    def identity_revoked(self, kind: str, cause: str) -> None:
        """An identity revocation (``kind``: agent/blueprint; ``cause``: see REVOCATION_CAUSES)."""
        kind = kind if kind in REVOKED_IDENTITIES else OTHER
        cause = cause if cause in REVOCATION_CAUSES else OTHER
        self._revocations[(kind, cause)].inc()

    def upstream_finished(self, leg: str, error: AcquireError | None, seconds: float) -> None:
        self._in_flight.dec()
        if leg not in self._upstream_seconds:
            leg = OTHER
        self._upstream[(leg, upstream_outcome(error))].inc()
        self._upstream_seconds[leg].observe(seconds)
