"""Configuration sources flattened into one case-insensitive key tree, ASP.NET Core style.

Keys are split on ``__`` or ``:``; JSON objects nest and JSON arrays become children
``0``, ``1``, ... A later source overrides an earlier one leaf by leaf.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KNOWN_SECTIONS = ("AzureAd", "DownstreamApis", "Sidecar", "Broker", "Logging", "Kestrel")
URLS_VARIABLE = "ASPNETCORE_URLS"
_KNOWN_TOP = {name.lower() for name in KNOWN_SECTIONS} | {URLS_VARIABLE.lower()}
_SEPARATOR = re.compile(r"__|:")


@dataclass
class Node:
    """One key: a leaf ``value`` and/or ``children`` keyed by lower-case segment."""

    name: str
    path: str
    value: str | None = None
    children: dict[str, Node] = field(default_factory=dict)

    def child(self, name: str) -> Node | None:
        return self.children.get(name.lower())

    def ensure(self, name: str) -> Node:
        key = name.lower()
        node = self.children.get(key)
        if node is None:
            path = f"{self.path}__{name}" if self.path else name
            node = self.children[key] = Node(name, path)
        return node


class Tree:
    """The merged configuration keys."""

    def __init__(self) -> None:
        self.root = Node("", "")
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def set(self, parts: list[str], value: str) -> None:
        node = self.root
        for part in parts:
            node = node.ensure(part)
        node.value = value

    def add_flat(self, items: Mapping[str, str], *, origin: str, only_known: bool) -> None:
        for key, value in items.items():
            parts = [p for p in _SEPARATOR.split(key.strip()) if p != ""]
            if not parts:
                continue
            if parts[0].lower() not in _KNOWN_TOP:
                if not only_known:
                    self.problems.append(
                        f"{key}: unknown key ({origin}); known sections are "
                        + ", ".join(KNOWN_SECTIONS)
                        + f" and {URLS_VARIABLE}"
                    )
                continue
            self.set(parts, value)

    def add_json_file(self, path: str | Path) -> None:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except OSError as exc:
            self.problems.append(f"--config {path}: cannot read file ({exc.strerror or type(exc).__name__})")
            return
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self.problems.append(f"--config {path}: invalid JSON at line {exc.lineno} column {exc.colno}")
            return
        if not isinstance(data, dict):
            self.problems.append(f"--config {path}: the top level must be a JSON object")
            return
        for key, value in data.items():
            if key.lower() not in _KNOWN_TOP:
                self.warnings.append(f"{key}: section ignored (from {path})")
                continue
            self._add_json([key], value)

    def _add_json(self, parts: list[str], value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                self._add_json([*parts, *[p for p in _SEPARATOR.split(str(key)) if p]], item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._add_json([*parts, str(index)], item)
        elif value is None:
            return
        elif isinstance(value, bool):
            self.set(parts, "true" if value else "false")
        else:
            self.set(parts, str(value))


def build_tree(
    env: Mapping[str, str], config_file: str | Path | None, overrides: Mapping[str, str] | None
) -> Tree:
    """Merge the sources in ASP.NET Core order: appsettings.json < environment < overrides."""
    tree = Tree()
    if config_file is not None:
        tree.add_json_file(config_file)
    tree.add_flat(env, origin="environment", only_known=True)
    if overrides:
        tree.add_flat(overrides, origin="command line", only_known=False)
    return tree
