"""Every in-memory structure that grows with callers or identities has a bound, and stays within it
when driven past it (docs/performance.md, "Bounds": this file holds the bounds whose component
runs without the network; the others are named in that table)."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import queue
from typing import Any

import pytest

import agent_token_broker
from agent_token_broker.api import params
from agent_token_broker.api.limits import MAX_AGENT_BUCKETS, MAX_RECENT_KEYS, InFlight, MissLimiter
from agent_token_broker.api.params import PARSE_MEMO_SIZE, Family, parse_query_string
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.settings.security import LimitsConfig

GUID = "{:08x}-0000-4000-8000-{:012x}"


def _broker_modules() -> list[Any]:
    found = []
    for info in pkgutil.walk_packages(agent_token_broker.__path__, "agent_token_broker."):
        try:
            found.append(importlib.import_module(info.name))
        except ImportError:  # an optional extra (redis) not installed
            continue
    return found


def _memos() -> dict[str, Any]:
    """Every functools memo defined at module level in the broker package, by qualified name."""
    memos: dict[str, Any] = {}
    for module in _broker_modules():
        for name, value in vars(module).items():
            if callable(getattr(value, "cache_info", None)) and getattr(value, "__module__", None) == module.__name__:
                memos[f"{module.__name__}.{name}"] = value
    return memos


def test_every_memo_in_the_broker_is_bounded() -> None:
    """No ``functools.cache`` or ``lru_cache(maxsize=None)``: a memo keyed by what callers send
    (query strings, paths, tenants, scopes) would grow with them."""
    memos = _memos()
    assert len(memos) >= 6, sorted(memos)  # the tag-set, scope, meta, parse and guard memos at least
    unbounded = [name for name, memo in memos.items() if memo.cache_info().maxsize is None]
    assert unbounded == []
    too_big = [name for name, memo in memos.items() if memo.cache_info().maxsize > 8_192]
    assert too_big == []


def test_module_memos_stay_within_their_size_when_driven_past_it() -> None:
    from agent_token_broker.cache.keys import _normalised_scopes
    from agent_token_broker.entra.legs import _meta
    from agent_token_broker.tokens import _tag_set

    drivers = {
        _tag_set: lambda i: _tag_set("bp", GUID.format(i, i), "tenant"),
        _normalised_scopes: lambda i: _normalised_scopes((f"api://r{i}/.default",)),
        _meta: lambda i: _meta("Bearer", f"scope-{i}"),
    }
    for memo, call in drivers.items():
        size = memo.cache_info().maxsize
        for i in range(size + 100):
            call(i)
        assert memo.cache_info().currsize == size, memo


def test_the_parse_memo_holds_at_most_its_size() -> None:
    for i in range(PARSE_MEMO_SIZE + 500):
        parse_query_string(f"AgentIdentity={GUID.format(i, i)}", Family.HEADER)
    assert params._parse_memo.cache_info().currsize == PARSE_MEMO_SIZE


def _open_limits(**kw: float) -> LimitsConfig:
    values: dict[str, Any] = {"cache_misses_per_second": 1e6, "cache_miss_burst": 1_000_000,
                              "cache_misses_per_second_per_agent": 1e6, "cache_miss_burst_per_agent": 1_000_000}
    values.update(kw)
    return LimitsConfig(**values)


def test_miss_limiter_buckets_and_recent_keys_are_bounded() -> None:
    limiter = MissLimiter(_open_limits())
    n = MAX_AGENT_BUCKETS + MAX_RECENT_KEYS // 2
    for i in range(n):
        agent = GUID.format(i, i)
        limiter.admit(agent, ("agent_app", "t", agent))
    assert limiter.sizes() == {"agent_buckets": MAX_AGENT_BUCKETS, "recent_keys": MAX_RECENT_KEYS}
    # the bound forgets the least recently used: the newest agents' keys are still free for 10 s
    newest = GUID.format(n - 1, n - 1)
    limiter.admit(newest, ("agent_app", "t", newest))
    assert limiter.sizes()["recent_keys"] == MAX_RECENT_KEYS


def test_a_forgotten_agent_bucket_does_not_lift_the_global_limit() -> None:
    limiter = MissLimiter(_open_limits(cache_misses_per_second=1.0, cache_miss_burst=5))
    for i in range(5):
        limiter.admit(GUID.format(i, i))
    with pytest.raises(ProblemError) as refused:
        limiter.admit(GUID.format(99, 99))
    assert refused.value.status == 429


def test_in_flight_counts_forget_callers_with_nothing_in_flight() -> None:
    tracker = InFlight(_open_limits(max_concurrent_requests=100_000, max_concurrent_requests_per_caller=10))
    for i in range(5_000):
        tracker.enter(f"10.0.{i // 250}.{i % 250}")
    assert tracker.callers == 5_000
    for i in range(5_000):
        tracker.leave(f"10.0.{i // 250}.{i % 250}")
    assert tracker.callers == 0


async def test_revocation_epoch_memory_is_bounded() -> None:
    """The shared cache's per-process memory of epoch record names and highest epochs seen."""
    pytest.importorskip("redis")
    from agent_token_broker.l2 import epochs as epochs_module
    from agent_token_broker.l2.sealing import KeyRing

    limit = 500
    original = epochs_module._SEEN_MAX
    epochs_module._SEEN_MAX = limit
    try:
        store = _NoRedis()
        tracker = epochs_module.RevocationEpochs(store, KeyRing([bytes(32)]), "atb:")  # type: ignore[arg-type]
        for i in range(3 * limit):
            names = tracker.names(f"atb:v{i}", [f"agent:{i}", f"agent:{i}@t"])
            await tracker.resolve(names, [b"1"] * len(names))
        assert len(tracker._tag_names) == limit and len(tracker._seen) == limit
    finally:
        epochs_module._SEEN_MAX = original


class _NoRedis:
    """Records are all present in these calls: resolving them never reaches the store."""

    async def init_epochs(self, *args: object) -> None:
        raise AssertionError("no record is missing")

    async def bump_epochs(self, *args: object) -> None:
        raise AssertionError("no record went back")


def test_audit_hit_counts_hold_one_window_and_the_line_queue_is_bounded(tmp_path: Any) -> None:
    """Hits are counted per key for one ``HitIntervalSeconds`` window, then written and forgotten; lines
    wait for the writer thread in a bounded queue (a full queue drops and counts, never grows)."""
    from agent_token_broker.audit.trail import AuditTrail, _BoundedQueueHandler
    from agent_token_broker.settings.callers import AuditConfig

    trail = AuditTrail(AuditConfig(file=str(tmp_path / "audit.log"), hits="off"))  # counted, not written
    for i in range(20_000):
        trail.hit(("agent", 1000 + i % 7, GUID.format(i, i), "graph", "agent_app"))
    assert len(trail.hits) == 20_000
    trail.flush()
    assert trail.hits == {} and trail.totals == {("agent", "hit"): 20_000}
    handler = _BoundedQueueHandler(queue.Queue(5))
    for i in range(12):
        handler.enqueue(logging.makeLogRecord({"msg": f"line {i}"}))
    assert handler.queue.qsize() == 5 and handler.dropped == 7  # type: ignore[attr-defined]
    if trail._listener is not None:
        trail._listener.stop()
