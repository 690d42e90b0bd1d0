"""What differs between two configurations, and the configuration a reload puts in force.

Each key is declared *live* (``setting(..., live=True)``: a running broker takes on a new
value at a reload) or not (a new value needs a restart). A key without the mark inherits its
section's (``DownstreamApis`` marks all its entries' keys at once); at the top level the
default is "restart", so a key added without thought is never applied half-way.

:func:`changes` lists the keys whose values differ, by ASP.NET name (``DownstreamApis__graph``
when an API is added or removed, ``DownstreamApis__graph__Scopes`` when one of its keys changes),
each with its mark. :func:`in_force` builds the configuration a reload puts in force: the new
value of every live key, the running value of every other one. Keys tied by a ``settle`` check
must share a mark (they do: the listeners, the cache timings, a credential's keys), so the mix is
always a configuration the checks accept. No value is ever part of a change, only key names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from agent_token_broker.settings.schema import Key, declared, default_of

T = TypeVar("T")


@dataclass(frozen=True)
class Change:
    """One key whose value differs; ``live``: a reload applies it (else it needs a restart)."""

    key: str
    live: bool


def is_live(key: Key, inherited: bool) -> bool:
    """The key's own mark, else its section's."""
    return inherited if key.live is None else key.live


def _join(prefix: str, name: str) -> str:
    return f"{prefix}__{name}" if prefix else name


def changes(old: Any, new: Any, prefix: str = "", live: bool = False) -> list[Change]:
    """The keys of two values of one declared class whose values differ, in declaration order."""
    return list(_changes(old, new, prefix, live))


def _changes(old: Any, new: Any, prefix: str, inherited: bool) -> Iterator[Change]:
    for name, key, shape, _tp, _ in declared(type(old)):
        path, live = _join(prefix, key.name), is_live(key, inherited)
        before, after = getattr(old, name), getattr(new, name)
        if shape == "section":
            if before is None or after is None:
                if (before is None) != (after is None):
                    yield Change(path, live)
            else:
                yield from _changes(before, after, path, live)
        elif shape == "named":
            yield from _named(before, after, path, live)
        elif shape == "indexed":
            if len(before) != len(after) or [e.index for e in before] != [e.index for e in after]:
                yield Change(path, live)
            else:
                for entry_old, entry_new in zip(before, after, strict=True):
                    yield from _changes(entry_old, entry_new, _join(path, str(entry_new.index)), live)
        elif shape == "map":
            for entry in default_of(type(old), name):
                if before.get(entry) != after.get(entry):
                    yield Change(_join(path, entry), live)
        elif before != after:
            yield Change(path, live)


def _named(before: Mapping[str, Any], after: Mapping[str, Any], path: str, live: bool) -> Iterator[Change]:
    for name in before:
        if name not in after:
            yield Change(_join(path, name), live)
    for name, entry in after.items():
        if name not in before:
            yield Change(_join(path, name), live)
        else:
            yield from _changes(before[name], entry, _join(path, name), live)


def in_force(old: T, new: T, live: bool = False) -> T:
    """``new`` with every key that is not live set back to its value in ``old``.

    Fields that are not keys (``Settings.warnings``, an entry's name) come from ``new``.
    """
    kept: dict[str, Any] = {}
    for name, key, shape, _tp, _ in declared(type(old)):
        key_live = is_live(key, live)
        before, after = getattr(old, name), getattr(new, name)
        if shape == "section" and before is not None and after is not None:
            kept[name] = in_force(before, after, key_live)
        elif not key_live:
            kept[name] = before
    return dataclasses.replace(new, **kept) if kept else new  # type: ignore[type-var]
