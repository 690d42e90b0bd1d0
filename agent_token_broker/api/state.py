"""Typed keys for what the API app holds (no globals: everything hangs off the app)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from agent_token_broker.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
