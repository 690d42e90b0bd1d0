"""Typed keys for what the API app holds (no globals: everything hangs off the app)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from agent_token_broker.api.gate import TokenGate
    from agent_token_broker.api.refusals import RefusalLog
    from agent_token_broker.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
GATE: web.AppKey[TokenGate] = web.AppKey("token_gate")
REFUSALS: web.AppKey[RefusalLog] = web.AppKey("refusal_log")
