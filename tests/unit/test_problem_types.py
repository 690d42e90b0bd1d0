"""Every problem type the code can emit has a cause title and is documented in docs/errors.md."""

from __future__ import annotations

import re
from pathlib import Path

from agent_token_broker.api.problems import PROBLEM_TITLES, STATUS_PHRASES, ProblemError, default_slug

ROOT = Path(__file__).resolve().parents[2]


def slugs_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "agent_token_broker").rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'slug="([a-z-]+)"', text))
        found |= set(re.findall(r'slug="[a-z-]+" if [^"]*? else "([a-z-]+)"', text))
    return found


def slugs_in_docs() -> set[str]:
    table = [line for line in (ROOT / "docs" / "errors.md").read_text().splitlines() if line.startswith("| `")]
    return {slug for line in table for slug in re.findall(r"`([a-z-]+)`", line.split("|")[1])}


def test_every_slug_the_code_uses_has_a_title_and_a_docs_row() -> None:
    used = slugs_in_code() | {default_slug(s) for s in (404, 405, 500)}
    assert "override-not-allowed" in used and "headers-too-large" in used
    assert used - set(PROBLEM_TITLES) == set()
    assert used - slugs_in_docs() == set()


def test_the_docs_list_no_problem_type_the_code_lacks() -> None:
    assert slugs_in_docs() - set(PROBLEM_TITLES) == set()


def test_titles_name_a_cause_not_a_status() -> None:
    phrases = {p.lower() for p in STATUS_PHRASES.values()}
    for slug, title in PROBLEM_TITLES.items():
        assert title.lower() not in phrases, slug
        assert len(title) <= 60, slug
    err = ProblemError(400, "AgentUserId must be a GUID", slug="invalid-parameter", parameter="AgentUserId")
    assert err.title == "invalid query parameter: AgentUserId"
