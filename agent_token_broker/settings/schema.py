"""Each configuration key declared once, as a dataclass field; reading, checks and views derived from it.

A key is a field made by :func:`setting`: its name under the section, default, bounds, parser and
one-line doc (a :class:`Key`); a ``Secret`` annotation makes it secret, a declared dataclass
annotation a sub-section (the default is then its class), ``Mapping[str, X]`` named entries and
``tuple[X, ...]`` an array. From the declarations come reading and validation (:func:`read`),
unknown-key detection (:func:`unread_keys`: a key no declaration looked up), the redacted view ``check-config`` prints
(:func:`effective`), what a reload may apply (``changes.py``: ``live=True`` marks a key, or a
section's keys, that a running broker takes on; every other key needs a restart) and the
reference tables of docs/configuration.md (``docs.py``). SPIRE's struct-tagged configuration is
the model. A dataclass may also declare ``IGNORED`` / ``REJECTED`` (key -> warning / error),
``OPEN`` (keys under which anything goes), ``DERIVED`` (label -> attribute shown by
``check-config``) and ``settle(draft)`` for checks across keys.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent_token_broker.settings.tree import Node

REDACTED = "<redacted>"
_KEY = "agent_token_broker.key"
_INDEX = re.compile(r"^[0-9]+$")
MISSING: Any = dataclasses.MISSING
T = TypeVar("T")


class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value. Call only where the value is sent to its consumer."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __reduce__(self) -> tuple[object, ...]:  # pragma: no cover - pickling is not a use case
        raise TypeError("Secret values cannot be pickled")


class ConfigError(Exception):
    """Invalid configuration. ``problems`` holds one line per problem, each naming its key (never a secret)."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


class CaseInsensitiveMapping(Mapping[str, T]):
    """A read-only mapping whose lookups ignore case; iteration yields the original names."""

    __slots__ = ("_by_lower", "_names")

    def __init__(self, items: Mapping[str, T] | Iterable[tuple[str, T]] = ()) -> None:
        self._by_lower: dict[str, T] = {}
        self._names: dict[str, str] = {}
        for name, value in items.items() if isinstance(items, Mapping) else items:
            self._by_lower[name.lower()] = value
            self._names.setdefault(name.lower(), name)

    def __getitem__(self, key: str) -> T:
        return self._by_lower[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._by_lower

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._by_lower)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({ {n: self._by_lower[k] for k, n in self._names.items()}!r})"


@dataclass(frozen=True)
class Warned:
    """A parser's result that carries a warning too (e.g. a wildcard listener)."""

    value: Any
    warning: str


@dataclass(frozen=True)
class Key:
    """One key's declaration. ``name`` is relative to the owning section (``__`` may nest)."""

    name: str
    doc: str = ""
    low: float | None = None  # bounds of numbers
    high: float | None = None
    low_open: bool = False  # the low bound is excluded
    min_len: int = 0  # of text and secrets
    required: bool = False
    parse: Callable[[str], Any] | None = None  # text -> value, ValueError(message) when bad; checks entry names
    split: str | None = None  # regex between list items (default: whitespace, in a plain string only)
    raw: bool = False  # the value unstripped; an empty value counts as given
    aliases: tuple[str, ...] = ()
    default_key: str | None = None  # the default is this (absolute, earlier-declared) key's value
    sources: tuple[str, ...] = ()  # the credential SourceTypes that use the key
    hidden: bool = False  # not shown by check-config
    show: Callable[[Any], Any] | None = None  # how check-config shows the value
    default_doc: str | None = None  # the docs' default and values columns, when not derived
    values_doc: str | None = None
    # Whether a reload (SIGHUP, config file change) applies a change of this key to the running
    # broker (True) or it needs a restart (False); None: as the enclosing section, and at the top
    # level "restart". See settings/changes.py.
    live: bool | None = None
    reserved: tuple[str, ...] = ()  # of named entries: names that are sibling keys, not entries


def setting(name: str, default: Any = MISSING, doc: str = "", **options: Any) -> Any:
    """A dataclass field declaring the key ``name`` (``options``: see :class:`Key`)."""
    meta = {_KEY: Key(name, doc, **options)}
    if isinstance(default, type) or (default is not MISSING and type(default).__hash__ is None):
        return field(default_factory=default if isinstance(default, type) else lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


Declared = tuple[tuple[str, Key, str, Any, bool], ...]
_DECLARED: dict[type, Declared] = {}


def declared(cls: Any) -> Declared:
    """``(field, Key, shape, type, optional)`` per key of ``cls``; shape: ``section``, ``named``
    (``Mapping[str, declared]``), ``indexed`` (``tuple[declared, ...]``), ``map`` (fixed names: the
    default's), ``list`` or ``scalar``."""
    if cls not in _DECLARED:
        hints, result = typing.get_type_hints(cls), []
        for f in dataclasses.fields(cls):
            if _KEY not in f.metadata:
                continue
            tp, args = hints[f.name], typing.get_args(hints[f.name])
            optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
            if optional:
                tp = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(tp), typing.get_args(tp)
            shape = "section" if _is_declared(tp) else "scalar"
            if origin is tuple:
                shape, tp = ("indexed" if _is_declared(args[0]) else "list"), args[0]
            elif origin is Mapping:
                shape, tp = ("named" if _is_declared(args[1]) else "map"), args[1]
            result.append((f.name, f.metadata[_KEY], shape, tp, optional))
        _DECLARED[cls] = tuple(result)
    return _DECLARED[cls]


def _is_declared(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and any(_KEY in f.metadata for f in dataclasses.fields(tp))


def default_of(cls: type, name: str) -> Any:
    f: Any = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not MISSING else (None if f.default is MISSING else f.default)


def _join(path: str, name: str) -> str:
    return f"{path}__{name}" if path else name


def _find(node: Node | None, name: str) -> Node | None:
    """The node of ``name`` (``__``-separated) under ``node``; each node on the way counts as read."""
    for part in name.split("__"):
        node = node.child(part) if node is not None else None
        if node is not None:
            node.read = True
    return node


def _read_all(node: Node) -> None:
    node.read = True
    for child in node.children.values():
        _read_all(child)


class Problems:
    """Problems and warnings found while reading, one line each naming the key."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.env: Mapping[str, str] = env or {}
        self.values: dict[str, Any] = {}  # lower-case key -> value read, for ``default_key``

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{key}: {message}")


class Draft:
    """One section's values before its dataclass is built: what ``settle`` hooks read and change."""

    def __init__(self, cls: type, path: str | None, values: dict[str, Any], given: set[str], problems: Problems):
        self.cls, self.path, self.values, self._given, self.problems = cls, path, values, given, problems
        self.env = problems.env

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def set(self, name: str, value: Any) -> None:
        self.values[name] = value

    def given(self, name: str) -> bool:
        return name in self._given

    def error(self, name: str, message: str) -> None:
        """Report a problem with field ``name``: under its key, or its field name for :func:`validate`."""
        key = name if self.path is None else _join(self.path, next(k.name for n, k, *_ in declared(self.cls) if n == name))
        self.problems.error(key, message)


def _bounds(key: Key, tp: Any, value: Any, shown: object = None) -> str | None:
    low, high, shown = key.low, key.high, value if shown is None else shown
    if tp is int and low is not None and high is not None and not low <= value <= high:
        return f"must be between {low} and {high}, got {shown}"
    if tp is float and low is not None and high is not None:
        if not math.isfinite(value) or (value <= low if key.low_open else value < low) or value > high:
            return f"must be in {'(' if key.low_open else '['}{low:g}, {high:g}], got {shown}"
    if key.min_len and len(value.reveal() if isinstance(value, Secret) else str(value)) < key.min_len:
        return f"must be at least {key.min_len} characters long"
    return None


def _scalar(key: Key, tp: Any, text: str) -> Any:
    """Convert one text value; raises ValueError with a message that never echoes a secret."""
    if key.parse is not None:
        return key.parse(text)
    value: Any = Secret(text) if tp is Secret else text
    if tp is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"must be true or false, got {text!r}")
        value = text.lower() == "true"
    elif tp in (int, float):
        try:
            value = tp(text)
        except ValueError:
            raise ValueError(f"must be {'an integer' if tp is int else 'a number'}, got {text!r}") from None
    problem = _bounds(key, tp, value, text if tp is float else None)
    if problem:
        raise ValueError(problem)
    return value


def _convert(key: Key, tp: Any, text: str | None, path: str, problems: Problems, default: Any = MISSING) -> Any:
    """``text`` converted; ``default`` when it is absent or bad (then the problem is recorded)."""
    if text is None:
        return default
    try:
        value = _scalar(key, tp, text)
    except ValueError as exc:
        problems.error(path, str(exc))
        return default
    if isinstance(value, Warned):
        problems.warn(path, value.warning)
        return value.value
    return value


def _text(node: Node | None, key: Key) -> str | None:
    if node is None or node.value is None:
        return None
    return node.value if key.raw else (node.value.strip() or None)


def indexed(node: Node, problems: Problems) -> list[Node]:
    """Children of an array node sorted by numeric index; bad indexes are reported."""
    for child in node.children.values():
        child.read = True
        if not _INDEX.match(child.name):
            problems.error(child.path, "array index must be a non-negative integer")
            _read_all(child)
    return sorted((c for c in node.children.values() if _INDEX.match(c.name)), key=lambda c: int(c.name))


def _list(key: Key, tp: Any, node: Node, path: str, problems: Problems) -> tuple[Any, ...]:
    """An array (``Name__0``, ``Name__1``...) or one string split on ``key.split`` (whitespace)."""
    texts = re.split(key.split or r"\s+", node.value or "") if not node.children else []
    for child in indexed(node, problems) if node.children else []:
        if child.children:
            problems.error(child.path, "must be a plain value")
        else:
            texts += re.split(key.split, child.value or "") if key.split else [child.value or ""]
    values = (_convert(key, tp, t.strip(), path, problems) for t in texts if t.strip())
    return tuple(v for v in values if v is not MISSING)


def _entries(key: Key, shape: str, tp: Any, node: Node, problems: Problems) -> Any:
    """Named entries (``DownstreamApis__<name>``) or an array of sections (``ClientCredentials__N``)."""
    if node.value and not node.children:
        problems.error(node.path, "must be " + ("an object of named entries" if shape == "named" else "an array"))
    built = []
    reserved = {name.lower() for name in key.reserved}
    for entry in node.children.values() if shape == "named" else indexed(node, problems):
        if shape == "named" and entry.name.lower() in reserved:
            continue  # a sibling key declared beside the entries (Broker__Callers__RequireMatch)
        entry.read = True
        if shape == "named" and key.parse is not None:
            _convert(key, str, entry.name, entry.path, problems)
        ident = {"name": entry.name} if shape == "named" else {"index": int(entry.name)}
        item = read(tp, entry, entry.path, problems, **ident)
        built += [(entry.name, item)] if item is not None else []
    return CaseInsensitiveMapping(built) if shape == "named" else tuple(item for _, item in built)


def read(cls: type[T], node: Node | None, path: str, problems: Problems, **extra: Any) -> T | None:
    """Read the declared dataclass ``cls`` from ``node``; problems are collected, not raised."""
    values, given, before = dict(extra), set(), len(problems.errors)
    for name, key, shape, tp, optional in declared(cls):
        found = [c for n in (key.name, *key.aliases) if (c := _find(node, n)) is not None]
        child = found[0] if found else None
        key_path, text, value = _join(path, key.name), _text(child, key), MISSING
        if child is not None and (child.children or text is not None or shape == "list"):
            given.add(name)
        elif key.required:
            problems.error(key_path, "required")
        if shape == "section":
            absent = optional and (child is None or not child.children)
            value = None if absent else read(tp, child, child.path if child else key_path, problems)
        elif shape in ("named", "indexed") and child is not None:
            value = _entries(key, shape, tp, child, problems)
        elif shape == "map":
            value = CaseInsensitiveMapping(
                (n, _convert(key, tp, _text(_find(child, n), key), _join(key_path, n), problems, v))
                for n, v in default_of(cls, name).items()
            )
        elif shape == "list" and name in given and child is not None:
            value = _list(key, tp, child, key_path, problems)
        elif shape == "scalar":
            value = _convert(key, tp, text, key_path, problems)
        if value is MISSING and key.default_key:
            value = problems.values.get(key.default_key.lower(), MISSING)
        values[name] = default_of(cls, name) if value is MISSING else value
        problems.values[key_path.lower()] = values[name]
    for marks, report in ((getattr(cls, "IGNORED", {}), problems.warn), (getattr(cls, "REJECTED", {}), problems.error)):
        for name, text in marks.items():
            if (marked := _find(node, name)) is not None:
                report(marked.path, text)
                _read_all(marked)
    for name in getattr(cls, "OPEN", ()):
        if (open_node := _find(node, name)) is not None:
            _read_all(open_node)
    if hasattr(cls, "settle"):
        getattr(cls, "settle")(Draft(cls, path, values, given, problems))  # noqa: B009
    try:
        return cls(**values)
    except (TypeError, ValueError):
        if len(problems.errors) > before:
            return None  # already reported: the load fails anyway
        raise


def validate(obj: Any) -> None:
    """Check a built object against its declared bounds and ``settle`` hook; raises ValueError."""
    problems, values = Problems(), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for name, key, shape, tp, _ in declared(type(obj)):
        problem = _bounds(key, tp, values[name]) if shape == "scalar" and values[name] is not None else None
        if problem:
            problems.error(name, problem)
    if hasattr(obj, "settle"):
        obj.settle(Draft(type(obj), None, values, set(), problems))
    if problems.errors:
        raise ValueError(f"invalid {type(obj).__name__}: " + "; ".join(problems.errors))


def unread_keys(node: Node, problems: Problems) -> None:
    """Report every key under ``node`` that no declaration read (one line, at its top): what the
    reader did not look up is not a key of ours (SPIRE's parser-detected unknown keys)."""
    for child in node.children.values():
        if child.read:
            unread_keys(child, problems)
        else:
            problems.error(child.path, "unknown key")


def plain(value: Any) -> Any:
    """A JSON-ready view of a value, secrets redacted."""
    if isinstance(value, Secret):
        return REDACTED
    if _is_declared(type(value)):
        return effective(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def effective(obj: Any) -> dict[str, Any]:
    """The keys of ``obj`` as nested dicts (ASP.NET names), as ``check-config`` shows them."""
    out: dict[str, Any] = {label: plain(getattr(obj, attr)) for label, attr in getattr(obj, "DERIVED", {}).items()}
    for name, key, *_ in declared(type(obj)):
        if key.hidden or (key.sources and getattr(obj, "source_type", None) not in key.sources):
            continue
        shown = key.show(getattr(obj, name)) if key.show else plain(getattr(obj, name))
        *parents, last = key.name.split("__")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(shown, dict) and isinstance(node.get(last), dict):
            node[last].update(shown)  # a section's keys beside keys declared elsewhere (Broker)
        else:
            node[last] = shown
    return out
