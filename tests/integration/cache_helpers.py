"""Helpers for the cache integration tests (tests/integration/test_cache_*.py).

Everything here talks to a real broker over HTTP and reads the emulator's
request log; nothing replaces a component under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from entra_emulator import demo
from tests.integration.helpers import claims_of

A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
UNAUTH = "/AuthorizationHeaderUnauthenticated"
REQUEST_TIMEOUT = 20.0
K = TypeVar("K")


def app_path(agent: str, api: str = "graph", extra: str = "") -> str:
    return f"{UNAUTH}/{api}?AgentIdentity={agent}{extra}"


@dataclass
class Reply:
    """One broker answer, with the local times around it (epoch seconds)."""

    status: int
    body: dict[str, Any]
    content_type: str
    headers: dict[str, str]
    sent: float
    received: float

    @property
    def elapsed(self) -> float:
        return self.received - self.sent

    @property
    def token(self) -> str:
        return str(self.body["authorizationHeader"]).partition(" ")[2]

    @property
    def claims(self) -> dict[str, Any]:
        return claims_of(self.token)

    @property
    def remaining(self) -> float:
        """Lifetime the served token had left when it arrived (from its ``exp`` claim)."""
        return float(self.claims["exp"]) - self.received


async def fetch(session: aiohttp.ClientSession, url: str, *, headers: dict[str, str] | None = None) -> Reply:
    sent = time.time()
    async with asyncio.timeout(REQUEST_TIMEOUT):
        async with session.get(url, headers=headers) as resp:
            text = await resp.text()
            received = time.time()
            try:
                body = json.loads(text) if text else {}
            except ValueError:
                body = {"_text": text}
            return Reply(resp.status, body, resp.content_type, dict(resp.headers), sent, received)


async def _fetch_until(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, out: list[Reply]) -> None:
    while not stop.is_set():
        out.append(await fetch(session, url))
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def fetching(
    session: aiohttp.ClientSession, urls: Mapping[K, str], workers_per_url: int = 1
) -> AsyncIterator[dict[K, list[Reply]]]:
    """``async with fetching(session, urls) as replies``: while the block runs, ``workers_per_url``
    loops per URL GET it again and again (0.05 s apart); ``replies[key]`` grows as answers arrive.
    Leaving the block stops the loops (their last requests may take up to 20 s)."""
    replies: dict[K, list[Reply]] = {key: [] for key in urls}
    stop = asyncio.Event()
    workers = [
        asyncio.ensure_future(_fetch_until(session, url, stop, replies[key]))
        for key, url in urls.items()
        for _ in range(workers_per_url)
    ]
    try:
        yield replies
    finally:
        stop.set()
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await asyncio.gather(*workers)


async def sleep_until(moment: float) -> None:
    """Wait until the wall clock (the broker's cache clock) reads ``moment`` or later."""
    while (left := moment - time.time()) > 0:
        await asyncio.sleep(left)


def client_session(limit: int = 100, total: float = 60.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=total),
    )


def select(
    entries: Iterable[dict[str, Any]],
    *,
    leg: str | None = None,
    client_id: str | None = None,
    fmi_path: str | None = None,
    status: int | None = None,
) -> list[dict[str, Any]]:
    def ok(e: dict[str, Any]) -> bool:
        return (
            (leg is None or e["leg"] == leg)
            and (client_id is None or (e["client_id"] or "").lower() == client_id.lower())
            and (fmi_path is None or (e["fmi_path"] or "").lower() == fmi_path.lower())
            and (status is None or e["status"] == status)
        )

    return [e for e in entries if ok(e)]
