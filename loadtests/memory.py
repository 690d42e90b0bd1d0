"""Where a running broker's memory goes, per structure: a walk of the Python objects each holds.

:func:`deep_sizes` walks the objects reachable from each category's roots (``gc.get_referents``)
and adds up ``sys.getsizeof``; an object is counted once, in the first category that reaches it
(so a string shared by a key and a tag counts in the category listed first), and the walk stops
at shared infrastructure (modules, classes, code, module globals, and the broker's long-lived
parts: runtime, cache, legs, HTTP client...). :func:`broker_categories` names the roots of a
running broker's structures that grow with callers or identities. Sizes are Python's object
sizes, without the allocator's rounding and free lists (RSS says the rest; tracemalloc sees
both): the table says *which* structure the bytes per token are in.

Used inside the broker process by :mod:`loadtests.probe`; reaches into private attributes on
purpose (a diagnostic, never the broker's API): a structure that is not there (renamed, or
another branch) is reported as missing rather than failing.
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

Roots = Callable[[], Iterable[Any]]
_STOP_TYPES = (types.ModuleType, type, types.CodeType, types.BuiltinFunctionType, types.FrameType)


@dataclass
class Size:
    name: str
    bytes: int = 0
    objects: int = 0
    missing: str | None = None


def _module_dicts() -> set[int]:
    return {id(vars(m)) for m in list(sys.modules.values()) if m is not None and hasattr(m, "__dict__")}


def deep_sizes(categories: list[tuple[str, Roots]], shared: Iterable[Any], boundary: Iterable[Any] = ()) -> list[Size]:
    """Bytes and object counts per category (see the module docstring); ``shared``: objects
    where the walk stops (counted nowhere); ``boundary``: objects a walk does not enter unless
    they are its own roots (a timer's arguments hold its cache entry: the entry is counted with
    the entries, not with the timers)."""
    seen: set[int] = {id(obj) for obj in shared}
    seen |= _module_dicts()
    fence = {id(obj) for obj in boundary}
    out: list[Size] = []
    for name, roots in categories:
        size = Size(name)
        try:
            stack = list(roots())
        except (AttributeError, KeyError, TypeError) as exc:  # not in this broker
            size.missing = f"{type(exc).__name__}: {exc}"
            out.append(size)
            continue
        own = {id(obj) for obj in stack}
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, _STOP_TYPES) or (id(obj) in fence and id(obj) not in own):
                continue
            seen.add(id(obj))
            size.bytes += sys.getsizeof(obj)
            size.objects += 1
            stack.extend(gc.get_referents(obj))
        out.append(size)
    return out


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        obj = getattr(obj, name)
    return obj


def _entries(broker: Any) -> list[Any]:
    return list(_attr(broker.runtime.cache, "_store", "_entries").values())


def _token_payloads(broker: Any) -> Iterator[Any]:
    """The token's own bytes: ``answer`` (the pre-rendered body holding them) or ``value``."""
    for entry in _entries(broker):
        token = entry.token
        if token is None:
            continue
        answer = getattr(token, "answer", None)
        if answer is not None:
            yield answer
            own = getattr(token, "_value", None)
            if own is not None:
                yield own
        else:
            yield token.value


def token_bytes(broker: Any) -> tuple[int, int]:
    """(tokens held, characters of their values): the "token's own bytes" of the goals."""
    values = [entry.token.value for entry in _entries(broker) if entry.token is not None]
    return len(values), sum(len(v) for v in values)


def _gate(broker: Any) -> Any:
    """The API's token gate (an app key on aiohttp's Application, or the low-level front's services)."""
    api = getattr(broker, "api", None)
    if api is not None:
        return api.gate
    for runner in broker.runners:
        handler = getattr(runner.server, "_handler", None)
        front = getattr(handler, "__self__", None)
        services = getattr(front, "services", None)
        if services is not None:
            return services.gate
        app = getattr(runner, "app", None)
        if app is not None:
            from agent_token_broker.api import state

            key = getattr(state, "GATE", None)
            if key is not None and key in app:
                return app[key]
    raise KeyError("no token gate found")


def _refusals(broker: Any) -> Any:
    api = getattr(broker, "api", None)
    if api is not None:
        return api.services.refusals
    for runner in broker.runners:
        handler = getattr(runner.server, "_handler", None)
        services = getattr(getattr(handler, "__self__", None), "services", None)
        if services is not None:
            return services.refusals
        app = getattr(runner, "app", None)
        from agent_token_broker.api import state

        key = getattr(state, "REFUSALS", None)
        if app is not None and key is not None and key in app:
            return app[key]
    raise KeyError("no refusal log found")


def _lru(module: str, name: str) -> Roots:
    """The entries of a module-level ``functools.lru_cache`` (its internal dict and links)."""

    def roots() -> list[Any]:
        fn = getattr(sys.modules[module], name)
        fn.cache_info()  # raises AttributeError when it is not an lru_cache (any more)
        return [r for r in gc.get_referents(fn) if isinstance(r, dict)]

    return roots


def broker_categories(broker: Any) -> list[tuple[str, Roots]]:
    """Every structure of a running broker (``server.RunningBroker``) that grows with callers or
    identities, as (name, roots), in attribution order."""
    rt = broker.runtime
    store = lambda: _attr(rt.cache, "_store")  # noqa: E731
    return [
        ("token bytes (value or pre-rendered answer)", lambda: _token_payloads(broker)),
        ("token objects (CachedToken, meta)", lambda: [e.token for e in _entries(broker) if e.token is not None]),
        ("cache keys", lambda: [e.key for e in _entries(broker)]),
        ("tags and tag index", lambda: [e.tags for e in _entries(broker)] + [store()._tags]),
        ("timers (TimerHandle)", lambda: [e.timer for e in _entries(broker) if e.timer is not None]),
        ("acquire functions (closures, requests)", lambda: [e.acquire for e in _entries(broker)]),
        ("cache entries (KeyEntry, Failure)", lambda: [e for e in _entries(broker)]),
        ("cache map (the dict itself)", lambda: [store()._entries]),
        ("request memo (gate decisions)", lambda: [_gate(broker)._memo]),
        ("remembered targets (gate, per raw query)", lambda: [_gate(broker)._targets]),
        ("parse memo", _lru("agent_token_broker.api.params", "_parse_memo")),
        ("tag-set memo", _lru("agent_token_broker.tokens", "_tag_set")),
        ("scope memo", _lru("agent_token_broker.cache.keys", "_normalised_scopes")),
        ("miss limiter (buckets, recent keys)", lambda: [_gate(broker).misses._agents, _gate(broker).misses._recent]),
        ("MSAL agent apps (LRU)", lambda: [_attr(rt.legs, "_apps", "_agents")]),
        ("MSAL blueprint apps", lambda: [_attr(rt.legs, "_apps", "_blueprints")]),
        ("discovery cache", lambda: [_attr(rt.legs, "_http", "_discovery")]),
        ("signature memo and JWKS", lambda: [_attr(rt.validator, "_verified"), *_jwks(rt.validator)]),
        ("refusal log", lambda: [vars(_refusals(broker))]),
        ("audit hit counts (the open window)", lambda: [rt.audit.hits]),
        ("connection guards", lambda: [vars(g) for g in broker.guards.values()]),
        ("metrics registry", lambda: [rt.metrics.registry]),
    ]


def _jwks(validator: Any) -> list[Any]:
    keys = getattr(validator, "_keys", None)
    return [keys] if keys is not None else []


def shared_objects(broker: Any) -> list[Any]:
    """Where the walk stops: the broker's long-lived parts (reached from every entry)."""
    rt = broker.runtime
    found: list[Any] = [broker, rt, rt.settings, rt.cache, rt.tokens, rt.legs, rt.validator, rt.outbound,
                        rt.trust, rt.metrics, rt.readiness, rt.ready_event, rt.shared_cache]
    for path in (("cache", "_store"), ("legs", "_http"), ("legs", "_apps"), ("legs", "_pool"), ("legs", "_sources"),
                 ("legs", "observer"), ("cache", "_obs")):
        try:
            found.append(_attr(rt, *path))
        except AttributeError:
            pass
    try:
        found.append(_gate(broker))
    except KeyError:
        pass
    found += list(broker.runners)
    found += [r.server for r in broker.runners if getattr(r, "server", None) is not None]
    import asyncio

    try:
        found.append(asyncio.get_running_loop())
    except RuntimeError:
        pass
    return found


def boundary_objects(broker: Any) -> list[Any]:
    """The per-entry objects each counted in their own category only."""
    found: list[Any] = []
    for entry in _entries(broker):
        found += [entry, entry.key, entry.tags, entry.acquire]
        found += [x for x in (entry.token, entry.timer) if x is not None]
    return found


def breakdown(broker: Any) -> dict[str, Any]:
    """The table: bytes and objects per structure, with the tokens held and their own bytes."""
    gc.collect()
    sizes = deep_sizes(broker_categories(broker), shared_objects(broker), boundary_objects(broker))
    tokens, chars = token_bytes(broker)
    return {
        "tokens_held": tokens,
        "token_chars": chars,
        "cache_entries": len(broker.runtime.cache),
        "structures": [
            {"structure": s.name, "bytes": s.bytes, "objects": s.objects, **({"missing": s.missing} if s.missing else {})}
            for s in sizes
        ],
    }
