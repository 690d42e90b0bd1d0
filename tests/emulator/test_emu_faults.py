"""Every fault mode, and that the request log counts what was attempted."""

from __future__ import annotations

import threading
import time
from typing import Any

import msal
import pytest
import requests

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.emulator.emu_helpers import EXCHANGE, GRAPH_DEFAULT, agent_app, cca, post_token

T1_FORM = {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID, "scope": EXCHANGE,
           "fmi_path": demo.AGENT_1_ID, "client_secret": demo.BLUEPRINT_SECRET}


def _token_entries(admin: EmulatorAdmin) -> list[dict[str, Any]]:
    return [r for r in admin.log()["requests"] if r["endpoint"] == "token"]


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_latency_then_normal_answer(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="latency", latency_ms=200, count=1)
    assert post_token(emulator, T1_FORM).status_code == 200
    assert post_token(emulator, T1_FORM).status_code == 200
    assert [r["fault"] for r in _token_entries(admin)] == ["latency", None]


def test_status_429_with_retry_after_json(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="status", status=429, retry_after=7)
    resp = post_token(emulator, T1_FORM)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    assert resp.json()["error_codes"] and resp.json()["error_description"].startswith("AADSTS")
    result = cca(emulator, demo.BLUEPRINT_APP_ID, demo.BLUEPRINT_SECRET).acquire_token_for_client(
        [EXCHANGE], fmi_path=demo.AGENT_1_ID)
    assert "access_token" not in result and result["error"] == "temporarily_unavailable"
    entries = _token_entries(admin)
    assert [(r["status"], r["fault"], r["leg"]) for r in entries] == [(429, "status", "t1")] * 2
    assert admin.counts()["t1"] == 2


def test_status_plain_text_and_5xx(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="status", status=429, plain_text=True, count=1)
    resp = post_token(emulator, T1_FORM)
    assert resp.status_code == 429 and resp.text == "Too Many Requests"
    admin.fault(target="token", mode="status", status=503)
    app = cca(emulator, demo.BLUEPRINT_APP_ID, demo.BLUEPRINT_SECRET)
    with pytest.raises(Exception):  # noqa: B017 - MSAL raises on 5xx (raise_for_status)
        app.acquire_token_for_client([EXCHANGE], fmi_path=demo.AGENT_1_ID)
    assert [r["status"] for r in _token_entries(admin)] == [429, 503]


def test_count_and_nth(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="status", status=500, count=2)
    assert [post_token(emulator, T1_FORM).status_code for _ in range(3)] == [500, 500, 200]
    admin.fault(target="token", mode="status", status=503, nth=2)
    assert [post_token(emulator, T1_FORM).status_code for _ in range(3)] == [200, 503, 200]
    assert admin.counts()["t1"] == 6


def test_match_filters(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="status", status=503, match={"leg": "app", "client_id": demo.AGENT_2_ID})
    assert "access_token" in agent_app(emulator, demo.AGENT_1_ID).acquire_token_for_client([GRAPH_DEFAULT])
    with pytest.raises(Exception):  # noqa: B017 - 503 for agent 2's app leg only
        agent_app(emulator, demo.AGENT_2_ID).acquire_token_for_client([GRAPH_DEFAULT])
    faulted = [(r["leg"], r["client_id"]) for r in _token_entries(admin) if r["fault"]]
    assert faulted == [("app", demo.AGENT_2_ID)]
    admin.clear_faults()
    admin.fault(target="token", mode="status", status=500, match={"fmi_path": demo.AGENT_2_ID})
    assert post_token(emulator, T1_FORM).status_code == 200
    assert post_token(emulator, dict(T1_FORM, fmi_path=demo.AGENT_2_ID)).status_code == 500


def test_hang_until_client_gives_up_then_cleared(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="hang")
    with pytest.raises(requests.exceptions.ReadTimeout):
        post_token(emulator, T1_FORM, timeout=0.5)
    outcome: dict[str, BaseException | int] = {}

    def waiter() -> None:
        try:
            outcome["result"] = post_token(emulator, T1_FORM, timeout=20).status_code
        except requests.RequestException as exc:
            outcome["result"] = exc

    thread = threading.Thread(target=waiter)
    thread.start()
    _wait_for(lambda: len(_token_entries(admin)) == 2)
    admin.clear_faults()  # releases the hung request by closing its connection
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert isinstance(outcome["result"], requests.exceptions.ConnectionError)
    assert post_token(emulator, T1_FORM).status_code == 200
    entries = _token_entries(admin)
    assert [(r["fault"], r["status"]) for r in entries] == [("hang", 0), ("hang", 0), (None, 200)]


def test_reset_and_outage_drop_the_connection(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="reset", count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        post_token(emulator, T1_FORM)
    admin.fault(target="token", mode="outage", count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        post_token(emulator, T1_FORM)
    assert post_token(emulator, T1_FORM).status_code == 200
    assert [r["fault"] for r in _token_entries(admin)] == ["reset", "outage", None]
    assert admin.counts()["t1"] == 3


def test_latency_stacks_with_a_terminal_fault(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="latency", latency_ms=100, count=1)
    admin.fault(target="token", mode="status", status=503, count=1)
    assert post_token(emulator, T1_FORM).status_code == 503
    assert _token_entries(admin)[-1]["fault"] == "latency+status"


def test_mi_and_discovery_targets(
    emulator: EmulatorServer, admin: EmulatorAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.fault(target="mi", mode="status", status=500, count=1)
    params = {"api-version": "2018-02-01", "resource": "api://AzureADTokenExchange"}
    url = f"{emulator.mi_url}/metadata/identity/oauth2/token"
    assert requests.get(url, params=params, headers={"Metadata": "true"}, timeout=10).status_code == 500
    assert requests.get(url, params=params, headers={"Metadata": "true"}, timeout=10).status_code == 200
    assert admin.counts()["mi"] == 2
    admin.fault(target="discovery", mode="status", status=503, count=1)
    with pytest.raises(Exception):  # noqa: B017 - MSAL cannot discover the authority
        msal.ConfidentialClientApplication(demo.BLUEPRINT_APP_ID, client_credential=demo.BLUEPRINT_SECRET,
                                           authority=emulator.authority, instance_discovery=False)
    assert post_token(emulator, T1_FORM).status_code == 200  # the token endpoint is unaffected
    admin.fault(target="all", mode="outage")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, params=params, headers={"Metadata": "true"}, timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):
        post_token(emulator, T1_FORM)
    admin.clear_faults()
    assert post_token(emulator, T1_FORM).status_code == 200
    endpoints = [(r["endpoint"], r["fault"]) for r in admin.log()["requests"] if r["fault"]]
    assert endpoints == [("mi", "status"), ("discovery", "status"), ("mi", "outage"), ("token", "outage")]


def test_status_fault_throttling_code_on_http_400(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    """Entra throttles user flows with HTTP 400, invalid_grant and AADSTS50196; a fault can say
    so, or send any AADSTS code and OAuth error on any status."""
    admin.fault(target="token", mode="status", status=400, count=1)
    body = post_token(emulator, T1_FORM).json()
    assert (body["error"], body["error_codes"]) == ("invalid_grant", [50196])
    admin.fault(target="token", mode="status", status=400, error_code=90055, error="invalid_request", count=1)
    resp = post_token(emulator, T1_FORM)
    assert resp.status_code == 400 and resp.json()["error_codes"] == [90055]
    assert resp.json()["error"] == "invalid_request"
    assert resp.json()["error_description"].startswith("AADSTS90055: ")
    for bad in ({"error_code": "x"}, {"error_code": -1}, {"error": "no spaces allowed"}):
        with pytest.raises(RuntimeError):
            admin.fault(target="token", mode="status", status=400, **bad)


def test_a_replacing_fault_clears_the_others_in_the_same_step(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    admin.fault(target="token", mode="status", status=503)
    admin.fault(target="token", mode="status", status=429, retry_after=1, replace=True)  # the 503 goes
    assert post_token(emulator, T1_FORM).status_code == 429
    admin.fault(target="token", mode="status", status=500, count=1)  # added beside the 429, after it
    assert post_token(emulator, T1_FORM).status_code == 429
    assert [r["status"] for r in _token_entries(admin)] == [429, 429]
