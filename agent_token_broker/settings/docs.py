"""The key reference of docs/configuration.md, generated from the declarations.

``python -m agent_token_broker.settings.docs`` prints it; ``--write docs/configuration.md`` replaces
the block between the markers. ``tests/unit/test_settings_docs.py`` fails when the two differ.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent_token_broker.settings.changes import is_live
from agent_token_broker.settings.model import Settings
from agent_token_broker.settings.schema import Key, Secret, declared, default_of

BEGIN = "<!-- BEGIN KEYS: generated from the declarations by `python -m agent_token_broker.settings.docs --write docs/configuration.md` -->"
END = "<!-- END KEYS -->"


def _default(key: Key, value: Any) -> str:
    if key.default_doc is not None or key.required or key.default_key:
        return key.default_doc or ("required" if key.required else f"`{key.default_key}`")
    if value is None or value == () or isinstance(value, Secret):
        return "none"
    if isinstance(value, bool | tuple | float):
        shown = str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else ";".join(map(str, value))
        return f"`{shown}`"
    return f"`{value}`"


def _values(key: Key, shape: str, tp: Any) -> str:
    text = key.values_doc or ("bool" if tp is bool else "secret" if tp is Secret else "text")
    if key.values_doc is None and tp in (int, float) and key.low is not None and key.high is not None:
        low_open = "(" if key.low_open else "["
        text = f"{int(key.low)} to {int(key.high)}" if tp is int else f"{low_open}{key.low:g}, {key.high:g}]"
    text += f", ≥ {key.min_len} chars" if key.min_len else ""
    text = f"list of {text}" if shape == "list" else text
    return text + (" (SourceType " + ", ".join(f"`{s}`" for s in key.sources) + ")" if key.sources else "")


def rows(cls: Any, prefix: str = "", live: bool = False) -> Iterator[tuple[str, str, str, str, str, str]]:
    """``(section, key, default, values, reload, meaning)`` for every key ``cls`` declares;
    ``reload``: ``live`` (a reload applies it) or ``restart``."""
    for name, key, shape, tp, _ in declared(cls):
        path = f"{prefix}__{key.name}" if prefix else key.name
        key_live = is_live(key, live)
        reload = "live" if key_live else "restart"
        if shape == "section":
            yield from rows(tp, path, key_live)
        elif shape in ("named", "indexed"):
            yield from rows(tp, path + ("__<name>" if shape == "named" else "__N"), key_live)
        elif shape == "map":
            for entry, value in default_of(cls, name).items():
                yield prefix, f"`{path}__{entry}`", _default(key, value), "bool", reload, key.doc.format(name=entry)
        else:
            label = f"`{path}`" + "".join(f" (or `{a}`)" for a in key.aliases)
            yield prefix, label, _default(key, default_of(cls, name)), _values(key, shape, tp), reload, key.doc
    for verdict, marks in (("accepted, warning", "IGNORED"), ("refused", "REJECTED")):
        for name, text in getattr(cls, marks, {}).items():
            yield prefix, f"`{prefix}__{name}`", "", verdict, "", text


def _section(prefix: str, label: str) -> str:
    match = re.match(r"^(.*?__(?:N|<name>))(?:__|$)", prefix)
    return match.group(1) if match else prefix or label.strip("`").split("__")[0]


def reference() -> str:
    """Markdown: one table per section, a section's tables together, in declaration order."""
    tables: dict[str, list[str]] = {}
    for prefix, *cells in rows(Settings):
        tables.setdefault(_section(prefix, cells[0]), []).append("| " + " | ".join(cells) + " |")
    firsts = list(dict.fromkeys(name.split("__")[0] for name in tables))
    parts = [BEGIN]
    for name, lines in sorted(tables.items(), key=lambda item: firsts.index(item[0].split("__")[0])):
        parts += ["", f"### `{name}`", "", "| key | default | values | reload | meaning |", "|---|---|---|---|---|", *lines]
    return "\n".join([*parts, "", END])


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"] and len(argv) == 2:
        path, text = Path(argv[1]), Path(argv[1]).read_text(encoding="utf-8")
        path.write_text(text[: text.index(BEGIN)] + reference() + text[text.index(END) + len(END) :], encoding="utf-8")
    else:
        print(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
