"""Token decisions per caller as Prometheus series, read from the audit trail at scrape time.

``agent_token_broker_caller_decisions_total{caller, outcome}``: ``caller`` is a
``Broker__Callers`` entry name or ``other`` (bounded by the configuration; never a uid, which
is unbounded), ``outcome`` one of ``hit``, ``issued``, ``refused``, ``error``. Hits are counted
by the trail's hit windows (one dict update per hit), so the hot path pays no metric update.
``agent_token_broker_audit_dropped_total``: audit lines dropped because the writer fell behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from agent_token_broker.audit.trail import OUTCOMES, AuditTrail
from agent_token_broker.callers import OTHER

PREFIX = "agent_token_broker"


class _CallerCollector(Collector):
    def __init__(self, trail: AuditTrail, names: Callable[[], Iterable[str]]) -> None:
        self._trail = trail
        self._names = names  # the configured entries (a reload may change them)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_caller_decisions",
            "Token decisions by caller (a Broker__Callers entry or 'other') and outcome.",
            labels=["caller", "outcome"],
        )
        totals = dict(self._trail.totals)
        for caller, count in self._trail.pending_hits().items():
            totals[(caller, "hit")] = totals.get((caller, "hit"), 0) + count
        names = dict.fromkeys([*self._names(), OTHER, *(caller for caller, _ in totals)])
        for caller in names:
            for outcome in OUTCOMES:
                family.add_metric([caller, outcome], totals.get((caller, outcome), 0))
        yield family
        dropped = CounterMetricFamily(
            f"{PREFIX}_audit_dropped", "Audit lines dropped because the audit writer fell behind."
        )
        dropped.add_metric([], self._trail.dropped)
        yield dropped


def register_audit_collector(
    registry: CollectorRegistry, trail: AuditTrail, names: Callable[[], Iterable[str]]
) -> None:
    registry.register(_CallerCollector(trail, names))
