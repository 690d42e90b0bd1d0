"""The ops-listener cache clear endpoint (``POST /admin/cache/clear``) against a real broker."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.cache_helpers import A1, A2, app_path, client_session, fetch, select
from tests.integration.conftest import BrokerFactory

SECRET = "s3cret-admin-value-for-tests-0123"
CLEAR = "/admin/cache/clear"


async def _clear(
    session: aiohttp.ClientSession, ops_url: str, body: Any, *, secret: str | None = SECRET
) -> tuple[int, str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with session.post(ops_url + CLEAR, data=data, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.json(content_type=None)


async def test_cache_clear_by_agent_blueprint_and_all(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    async with broker_factory(Broker__Cache__AdminSecret=SECRET) as broker, client_session() as s:
        assert broker.ops_url is not None
        api = broker.api_urls[0]
        for agent in (A1, A2):
            for api_name in ("graph", "demo"):
                assert (await fetch(s, api + app_path(agent, api_name))).status == 200
        # 2 agents x (T1 + graph + demo) = 6 entries
        assert len(broker.runtime.cache) == 6

        status, ctype, body = await _clear(s, broker.ops_url, {"type": "agent", "value": A1.upper()})
        assert (status, ctype) == (200, "application/json"), body
        assert body["evicted"] == 3 and body["remaining"] == 3

        seq = admin.last_seq()
        assert (await fetch(s, api + app_path(A2))).status == 200  # A2 still cached
        assert admin.token_requests(seq) == []
        assert (await fetch(s, api + app_path(A1))).status == 200  # A1 acquired again
        legs = sorted(e["leg"] for e in admin.token_requests(seq))
        assert legs == ["app", "t1"], legs

        status, _, body = await _clear(
            s, broker.ops_url, {"type": "blueprint", "value": demo.BLUEPRINT_APP_ID}
        )
        assert status == 200 and body["evicted"] == 5 and body["remaining"] == 0, body
        other = "0b0b0b0b-0000-4000-8000-00000000000b"
        status, _, body = await _clear(s, broker.ops_url, {"type": "blueprint", "value": other})
        assert status == 200 and body["evicted"] == 0, body

        assert (await fetch(s, api + app_path(A2))).status == 200
        status, _, body = await _clear(s, broker.ops_url, {"type": "all"})
        assert status == 200 and body["evicted"] == 2 and body["remaining"] == 0, body


async def test_cache_clear_refuses_bad_secret_and_bad_bodies(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    async with broker_factory(Broker__Cache__AdminSecret=SECRET) as broker, client_session() as s:
        assert broker.ops_url is not None
        assert (await fetch(s, broker.api_urls[0] + app_path(A1))).status == 200
        for secret in (None, "wrong-secret-of-some-length", SECRET + "x", ""):
            status, ctype, body = await _clear(s, broker.ops_url, {"type": "all"}, secret=secret)
            assert (status, ctype) == (401, "application/problem+json"), (secret, body)
            assert SECRET not in json.dumps(body)
        async with s.post(broker.ops_url + CLEAR, headers={"Authorization": f"Basic {SECRET}"}) as resp:
            assert resp.status == 401
        bad_bodies: list[Any] = [
            b"not json",
            [1, 2],
            {"type": "everything"},
            {"type": "agent"},
            {"type": "agent", "value": "../etc"},
            {"type": "agent", "value": "not-a-guid"},  # a name no cached token can carry: 400, not "evicted 0"
            {"type": "agent", "value": A1 + "0"},
            {"type": "agent", "value": 42},
            {"type": "blueprint", "value": "someone-else"},
            {"type": "all", "value": A1},
        ]
        for bad in bad_bodies:
            status, ctype, body = await _clear(s, broker.ops_url, bad)
            assert (status, ctype) == (400, "application/problem+json"), (bad, body)
            assert body["type"] == "urn:agent-token-broker:problem:bad-request", body
            if isinstance(bad, dict) and bad.get("type") != "all" and "value" in bad:
                assert "GUID" in body["detail"], body
        too_big = json.dumps({"type": "all", "pad": "x" * (128 * 1024)})
        status, ctype, body = await _clear(s, broker.ops_url, too_big)
        assert (status, ctype) == (413, "application/problem+json"), body
        assert body["type"] == "urn:agent-token-broker:problem:payload-too-large", body
        async with s.get(broker.ops_url + CLEAR, headers={"Authorization": f"Bearer {SECRET}"}) as resp:
            assert resp.status == 405 and resp.content_type == "application/problem+json"
        # Nothing above evicted anything.
        assert len(broker.runtime.cache) == 2
        # The API listener does not serve the admin route.
        async with s.post(broker.api_urls[0] + CLEAR, headers={"Authorization": f"Bearer {SECRET}"}) as resp:
            assert resp.status == 404


async def test_cache_clear_is_absent_without_a_secret(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    async with broker_factory() as broker, client_session() as s:
        assert broker.ops_url is not None
        status, ctype, body = await _clear(s, broker.ops_url, {"type": "all"})
        assert (status, ctype) == (404, "application/problem+json"), body


async def test_disabled_agent_refused_at_t1_evicts_only_that_agent(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    """A T1 refusal that names the agent (fmi_path) is the agent's, not the whole blueprint's."""
    async with broker_factory(Broker__Cache__AdminSecret=SECRET) as broker, client_session() as s:
        assert broker.ops_url is not None
        api = broker.api_urls[0]
        before = {a: await fetch(s, api + app_path(a)) for a in (A1, A2)}
        assert {r.status for r in before.values()} == {200}
        admin.disable_agent(A1)
        status, _, body = await _clear(s, broker.ops_url, {"type": "agent", "value": A1})
        assert status == 200 and body["evicted"] == 2
        seq = admin.last_seq()
        refused = await fetch(s, api + app_path(A1))
        assert refused.status == 401 and refused.content_type == "application/problem+json"
        assert refused.body["errorCode"] == "AADSTS7000112", refused.body
        t1 = select(admin.token_requests(seq), leg="t1", fmi_path=A1)
        assert len(t1) == 1 and t1[0]["error_code"] == 7000112, t1
        # A2's tokens survived: served from cache without any upstream request.
        seq = admin.last_seq()
        again = await fetch(s, api + app_path(A2))
        assert again.status == 200 and again.token == before[A2].token
        assert admin.token_requests(seq) == []
