"""docs/errors.md lists exactly the problem types the broker can answer, with their statuses (issue 19.6).

The code side is read from the source: every ``ProblemError(...)``/``problem_response(...)`` call with a
literal ``slug``, or without one (the type is then derived from the status, ``problems.default_slug``), and
the listeners' pre-rendered answers (``_canned(status, reason, detail, slug)``).
aiohttp's own HTTP exceptions reach the error middleware with a status chosen at run time; the ones
the broker's apps can raise are listed here (404 and 405 from routing, 413 from the ops app's body
limit) and checked live in the integration tests.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from agent_token_broker.api.problems import default_slug

ROOT = Path(__file__).resolve().parents[2]
HTTP_EXCEPTION_STATUSES = (404, 405, 413)
PROBLEM_BUILDERS = ("ProblemError", "problem_response")  # slug= keyword, else derived from the status
CANNED_BUILDERS = {"_canned": 3}  # pre-rendered answers: positional index of the slug


def documented() -> dict[str, set[int]]:
    """type -> statuses, from the table rows of docs/errors.md."""
    table: dict[str, set[int]] = {}
    for line in (ROOT / "docs" / "errors.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        types = re.findall(r"`([a-z0-9-]+)`", cells[0])
        statuses = [int(s) for s in re.findall(r"\d{3}", cells[1])]
        for i, name in enumerate(types):
            table.setdefault(name, set()).update(
                {statuses[i]} if len(statuses) == len(types) else set(statuses)
            )
    return table


def in_code() -> dict[str, set[int]]:
    """type -> statuses the source can produce."""
    found: dict[str, set[int]] = {}
    for path in (ROOT / "agent_token_broker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in (*PROBLEM_BUILDERS, *CANNED_BUILDERS) or not node.args:
                continue
            status = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            if name in CANNED_BUILDERS:  # listeners.py: answers written before aiohttp sees the request
                slug_node: ast.expr | None = node.args[CANNED_BUILDERS[name]]
            else:
                slug_node = next((k.value for k in node.keywords if k.arg == "slug"), None)
            if isinstance(slug_node, ast.Constant):
                slugs = [slug_node.value]
            elif isinstance(slug_node, ast.IfExp):  # slug="a" if ... else "b"
                slugs = [n.value for n in (slug_node.body, slug_node.orelse) if isinstance(n, ast.Constant)]
                status = None
            elif slug_node is None and isinstance(status, int):
                slugs = [default_slug(status)]
            elif slug_node is None:  # the middleware's HTTPException statuses
                for code in HTTP_EXCEPTION_STATUSES:
                    found.setdefault(default_slug(code), set()).add(code)
                continue
            else:  # re-raised ProblemError objects (problem.slug): built elsewhere with literals
                continue
            for slug in slugs:
                entry = found.setdefault(slug, set())
                if isinstance(status, int):
                    entry.add(status)
    return found


def test_every_type_the_code_returns_is_documented_and_nothing_else() -> None:
    docs, code = documented(), in_code()
    assert set(code) - set(docs) == set(), "returned but not in docs/errors.md"
    assert set(docs) - set(code) == set(), "in docs/errors.md but never returned"


def test_documented_statuses_match_the_code() -> None:
    docs, code = documented(), in_code()
    for slug, statuses in code.items():
        assert statuses <= docs[slug], (slug, statuses, docs[slug])


def test_431_and_413_types() -> None:
    docs = documented()
    assert docs["headers-too-large"] == {431}
    assert docs["bad-http"] == {400}  # a 431 from the HTTP parser is headers-too-large too
    assert docs["payload-too-large"] == {413}
