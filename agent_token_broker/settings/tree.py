"""Configuration sources flattened into one case-insensitive key tree, ASP.NET Core style.

Keys are split on ``__`` or ``:``; JSON objects nest and JSON arrays become children
``0``, ``1``, ... A later source overrides an earlier one leaf by leaf. ``appsettings.json`` is read
as ASP.NET Core's JSON provider reads it: UTF-8, or UTF-16/32 with a byte-order mark; ``//`` and
``/* */`` comments and trailing commas allowed; a key given twice is an error.
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
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/|/\*|\S', re.DOTALL)
_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


@dataclass
class Node:
    """One key: a leaf ``value`` and/or ``children`` keyed by lower-case segment."""

    name: str
    path: str
    value: str | None = None
    children: dict[str, Node] = field(default_factory=dict)
    read: bool = False  # a declaration looked it up (see schema.unread_keys)

    def child(self, name: str) -> Node | None:
        return self.children.get(name.lower())

    def ensure(self, name: str) -> Node:
        key = name.lower()
        node = self.children.get(key)
        if node is None:
            path = f"{self.path}__{name}" if self.path else name
            node = self.children[key] = Node(name, path)
        return node


def decode_config(data: bytes) -> str:
    """The text of a configuration file; raises ValueError naming the encoding problem."""
    encoding, start = next(((enc, len(bom)) for bom, enc in _BOMS if data.startswith(bom)), ("utf-8", 0))
    hint = "" if start else "; save it as UTF-8, or as UTF-16 with a byte-order mark"
    try:
        text = data[start:].decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid {encoding.upper()} text (byte {exc.start + start}){hint}") from None
    if encoding == "utf-8" and "\x00" in text:  # UTF-16 without a byte-order mark: UTF-8 with NULs
        raise ValueError(f"not valid {encoding.upper()} text (NUL at byte {data.index(0)}){hint}")
    return text


def strip_jsonc(text: str) -> str:
    """Blank out comments and trailing commas (outside strings), keeping every line and column."""
    out, last, comma = list(text), "", -1  # the previous token; a comma that may be trailing
    for match in _TOKEN.finditer(text):
        token, start = match.group(), match.start()
        if token.startswith("/*") and (len(token) < 4 or not token.endswith("*/")):
            raise ValueError("unterminated /* comment")
        if token.startswith(("//", "/*")):
            out[start : match.end()] = [c if c == "\n" else " " for c in token]
            continue
        if token in "}]" and comma >= 0:
            out[comma] = " "
        comma, last = (start if token == "," and last not in "{[," else -1), token[0]
    return "".join(out)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _Object(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept (so they can be reported)."""


class Tree:
    """The merged configuration keys."""

    def __init__(self) -> None:
        self.root = Node("", "")
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def put(self, parts: list[str], value: str) -> None:
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
            self.put(parts, value)

    def add_json_file(self, path: str | Path, data: bytes | None = None) -> None:
        """Add ``path``'s keys (``data``: its bytes, when the caller read them already)."""
        try:
            text = strip_jsonc(decode_config(Path(path).read_bytes() if data is None else data))
        except OSError as exc:
            self.problems.append(f"--config {path}: cannot read file ({exc.strerror or type(exc).__name__})")
            return
        except ValueError as exc:
            self.problems.append(f"--config {path}: {exc}")
            return
        try:
            data = json.loads(
                text, parse_int=str, parse_float=str, parse_constant=_no_constants, object_pairs_hook=_Object
            )
        except json.JSONDecodeError as exc:
            self.problems.append(f"--config {path}: invalid JSON at line {exc.lineno} column {exc.colno}")
            return
        except ValueError as exc:
            self.problems.append(f"--config {path}: {exc}")
            return
        if not isinstance(data, _Object):
            self.problems.append(f"--config {path}: the top level must be a JSON object")
            return
        seen: set[str] = set()
        for key, value in data:
            if key.lower() not in _KNOWN_TOP:
                self.warnings.append(f"{key}: section ignored (from {path})")
                continue
            self._add_json([key], value, seen, path)

    def _add_json(self, parts: list[str], value: Any, seen: set[str], path: str | Path) -> None:
        if isinstance(value, _Object):
            for key, item in value:
                self._add_json([*parts, *[p for p in _SEPARATOR.split(str(key)) if p]], item, seen, path)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._add_json([*parts, str(index)], item, seen, path)
        elif value is not None:
            name = "__".join(parts)
            if name.lower() in seen:
                self.problems.append(f"--config {path}: {name} is given twice")
            seen.add(name.lower())
            self.put(parts, ("true" if value else "false") if isinstance(value, bool) else str(value))


def build_tree(
    env: Mapping[str, str],
    config_file: str | Path | None,
    overrides: Mapping[str, str] | None,
    config_data: bytes | None = None,
) -> Tree:
    """Merge the sources in ASP.NET Core order: appsettings.json < environment < overrides."""
    tree = Tree()
    if config_file is not None:
        tree.add_json_file(config_file, config_data)
    tree.add_flat(env, origin="environment", only_known=True)
    if overrides:
        tree.add_flat(overrides, origin="command line", only_known=False)
    return tree
