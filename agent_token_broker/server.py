"""Run the broker: API and ops listeners, graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent_token_broker.api.app import create_api_app, create_ops_app
from agent_token_broker.api.protocol import ProblemAppRunner
from agent_token_broker.runtime import Runtime
from agent_token_broker.settings import Listen, Settings

log = logging.getLogger("agent_token_broker")
SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass
class RunningBroker:
    runtime: Runtime
    runners: list[web.AppRunner]
    api_urls: list[str]
    ops_url: str | None


async def _start_site(runner: web.AppRunner, listen: Listen, *, socket_mode: int = 0o660) -> str:
    if listen.kind == "unix":
        assert listen.path is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen.path)
        site: web.BaseSite = web.UnixSite(runner, listen.path)
        await site.start()
        os.chmod(listen.path, socket_mode)
        return f"unix:{listen.path}"
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    await site.start()
    server = site._server
    port = listen.port
    sockets = getattr(server, "sockets", None)
    if sockets:
        port = sockets[0].getsockname()[1]
    host = f"[{listen.host}]" if ":" in (listen.host or "") else listen.host
    return f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def running(settings: Settings, *, wait_ready: float | None = None) -> AsyncIterator[RunningBroker]:
    """Start the broker in the current event loop; stop it (gracefully) on exit."""
    runtime = await Runtime.create(settings)
    warm = asyncio.create_task(runtime.warm_up(), name="warm-up")
    runners: list[web.AppRunner] = []
    try:
        api_runner = ProblemAppRunner(
            create_api_app(runtime), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
        )
        await api_runner.setup()
        runners.append(api_runner)
        mode = settings.security.unix_socket_mode
        api_urls = [await _start_site(api_runner, listen, socket_mode=mode) for listen in settings.listen]
        ops_url = None
        if settings.ops_listen is not None:
            ops_runner = web.AppRunner(create_ops_app(runtime), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
            await ops_runner.setup()
            runners.append(ops_runner)
            ops_url = await _start_site(ops_runner, settings.ops_listen)
        if wait_ready:
            await asyncio.wait_for(runtime.ready_event.wait(), wait_ready)
        yield RunningBroker(runtime, runners, api_urls, ops_url)
    finally:
        warm.cancel()
        for runner in runners:
            await runner.cleanup()
        await runtime.close()


async def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; in-flight requests get a grace period to finish."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as broker:
        log.info("API listening on %s; ops on %s", ", ".join(broker.api_urls), broker.ops_url or "off")
        await stop.wait()
        log.info("shutting down")


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine with uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
        return
    uvloop.run(main)
