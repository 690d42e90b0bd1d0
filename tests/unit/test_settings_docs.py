"""The configuration reference in docs/configuration.md is generated from the key declarations."""

from __future__ import annotations

from pathlib import Path

from agent_token_broker.settings.docs import BEGIN, END, reference, rows
from agent_token_broker.settings.model import Settings
from agent_token_broker.settings.schema import declared
from agent_token_broker.settings.tree import KNOWN_SECTIONS, URLS_VARIABLE

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_table_is_the_declarations() -> None:
    text = DOC.read_text(encoding="utf-8")
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == reference(), (
        "docs/configuration.md differs from the key declarations; run "
        "`python -m agent_token_broker.settings.docs --write docs/configuration.md`"
    )


def test_every_declared_key_has_a_doc_line_and_a_row() -> None:
    keys = [row[1] for row in rows(Settings)]
    assert len(keys) == len(set(keys)) > 100
    stack: list[type] = [Settings]
    while stack:
        cls = stack.pop()
        for name, key, shape, tp, _ in declared(cls):
            if shape in ("section", "named", "indexed"):
                stack.append(tp)
            else:
                assert key.doc, f"{cls.__name__}.{name} ({key.name}) has no doc line"


def test_environment_sections_are_the_declared_top_level_sections() -> None:
    top = {key.name.split("__")[0].lower() for _, key, *_ in declared(Settings)} | {n.lower() for n in Settings.OPEN}
    assert top == {s.lower() for s in KNOWN_SECTIONS} | {URLS_VARIABLE.lower()}
