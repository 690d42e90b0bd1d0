"""Typed reads from a configuration :class:`Node`, collecting one problem line per bad key."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from agent_token_broker.settings.tree import Node

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_INDEX_RE = re.compile(r"^[0-9]+$")


class Problems:
    """Problems and warnings found while reading."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{key}: {message}")


class Section:
    """A view of one node. Keys are read with their canonical names (used in messages)."""

    def __init__(self, node: Node | None, path: str, problems: Problems) -> None:
        self.node = node
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}__{name}" if self.path else name

    @property
    def present(self) -> bool:
        return self.node is not None

    def names(self) -> list[str]:
        """Names of the children, in their original case."""
        return [c.name for c in self.node.children.values()] if self.node else []

    def sub(self, name: str) -> Section:
        self._seen.add(name.lower())
        node = self.node.child(name) if self.node else None
        return Section(node, self.key(node.name if node else name), self.problems)

    def has(self, name: str) -> bool:
        return self.node is not None and self.node.child(name) is not None

    def raw(self, name: str) -> str | None:
        """The value as given (``""`` included), or None when absent."""
        self._seen.add(name.lower())
        node = self.node.child(name) if self.node else None
        return None if node is None else node.value

    def get_str(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def required(self, name: str) -> str | None:
        value = self.get_str(name)
        if value is None:
            self.problems.error(self.key(name), "required")
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.get_str(name)
        if value is None:
            return default
        if value.lower() == "true":
            return True
        if value.lower() == "false":
            return False
        self.problems.error(self.key(name), f"must be true or false, got {value!r}")
        return default

    def get_int(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get_str(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problems.error(self.key(name), f"must be an integer, got {value!r}")
            return default
        if not low <= number <= high:
            self.problems.error(self.key(name), f"must be between {low} and {high}, got {number}")
            return default
        return number

    def get_float(
        self, name: str, default: float, low: float, high: float, *, low_open: bool = False
    ) -> float:
        value = self.get_str(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            self.problems.error(self.key(name), f"must be a number, got {value!r}")
            return default
        too_low = number <= low if low_open else number < low
        if not math.isfinite(number) or too_low or number > high:
            bracket = "(" if low_open else "["
            self.problems.error(self.key(name), f"must be in {bracket}{low:g}, {high:g}], got {value}")
            return default
        return number

    def get_list(self, name: str) -> tuple[str, ...] | None:
        """An array (``Name__0``, ``Name__1``...) or a whitespace-separated string; None if absent."""
        self._seen.add(name.lower())
        node = self.node.child(name) if self.node else None
        if node is None:
            return None
        if node.children:
            items = indexed_children(node, self.key(node.name), self.problems)
            values = []
            for _, child in items:
                if child.children:
                    self.problems.error(child.path, "must be a plain value")
                elif child.value and child.value.strip():
                    values.append(child.value.strip())
            return tuple(values)
        return tuple((node.value or "").split())

    def check_unknown(self, *, ignored: Iterable[str] = (), ignored_reason: str = "ignored") -> None:
        """Report every child that was not read as an unknown key; warn for ``ignored`` ones."""
        if self.node is None:
            return
        quiet = {n.lower() for n in ignored}
        for lower, child in self.node.children.items():
            if lower in self._seen:
                continue
            if lower in quiet:
                self.problems.warn(child.path, ignored_reason)
            else:
                self.problems.error(child.path, "unknown key")


def indexed_children(node: Node, path: str, problems: Problems) -> list[tuple[int, Node]]:
    """Children of an array node sorted by numeric index; bad indexes are reported."""
    items: list[tuple[int, Node]] = []
    for child in node.children.values():
        if _INDEX_RE.match(child.name):
            items.append((int(child.name), child))
        else:
            problems.error(child.path, "array index must be a non-negative integer")
    items.sort(key=lambda pair: pair[0])
    return items


def is_guid(value: str) -> bool:
    return bool(GUID_RE.match(value))
