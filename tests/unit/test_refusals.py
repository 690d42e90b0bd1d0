"""Gated refusals are logged for the operator: once per distinct cause per minute, naming the key."""

from __future__ import annotations

import logging

import pytest

from agent_token_broker.api.problems import ProblemError
from agent_token_broker.api.refusals import RefusalLog
from agent_token_broker.cache.testing import FakeClock

FLAG = "Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated"
ROUTE = "/AuthorizationHeaderUnauthenticated/{api}"


def gated(title: str = "override not allowed: optionsOverride.Scopes", key: str = FLAG) -> ProblemError:
    return ProblemError(400, "detail with a value", slug="override-not-allowed", title=title, config_key=key)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent_token_broker.api.refusals"]


def test_one_line_per_cause_per_minute_with_the_count_of_repeats(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RefusalLog(clock=clock)
    with caplog.at_level(logging.WARNING, logger="agent_token_broker.api.refusals"):
        assert log.note(gated(), ROUTE)
        for _ in range(5):
            clock.advance(10)
            assert not log.note(gated(), ROUTE)
        assert log.note(gated(title="override not allowed: optionsOverride.AcquireTokenOptions.Tenant"), ROUTE)
        clock.advance(10.5)  # 60.5 s after the first line
        assert log.note(gated(), ROUTE)
    first, tenant, again = lines(caplog)
    assert first == (
        f"refused a request on {ROUTE} (HTTP 400, override not allowed: optionsOverride.Scopes); "
        f"the setting that decides this is {FLAG}"
    )
    assert "Tenant" in tenant and FLAG in tenant
    assert again.endswith("(5 more like it since the last such line)")
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert not any("detail with a value" in line for line in lines(caplog))


def test_refusals_without_a_config_key_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(clock=FakeClock())
    with caplog.at_level(logging.WARNING):
        assert not log.note(ProblemError(400, "bad", slug="invalid-parameter", parameter="AgentIdentity"), ROUTE)
    assert lines(caplog) == []


def test_the_cause_table_and_the_lines_per_minute_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = RefusalLog(clock=clock, max_causes=8, max_lines=5)
    with caplog.at_level(logging.WARNING, logger="agent_token_broker.api.refusals"):
        logged = sum(log.note(gated(key=f"DownstreamApis__api{i}__Scopes"), ROUTE) for i in range(100))
        assert logged == 5 and len(log._causes) <= 8
        clock.advance(61)
        assert log.note(gated(key="DownstreamApis__next__Scopes"), ROUTE)
    assert len(lines(caplog)) == 6
