"""Run the broker: API and ops listeners, graceful shutdown on SIGTERM/SIGINT, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent_token_broker.api.app import create_api_app, create_ops_app
from agent_token_broker.api.protocol import ProblemAppRunner
from agent_token_broker.listeners import BoundListener, ConnectionGuard, ConnectionLimits, bind, serve
from agent_token_broker.reload import ConfigReloader, ConfigSources, Signature
from agent_token_broker.runtime import Runtime
from agent_token_broker.settings import Settings
from agent_token_broker.tracing import Tracer

log = logging.getLogger("agent_token_broker")
SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass
class RunningBroker:
    runtime: Runtime
    runners: list[web.AppRunner]
    api_urls: list[str]
    ops_url: str | None
    guards: dict[str, ConnectionGuard] = field(default_factory=dict)  # "api", "ops"


def connection_limits(settings: Settings) -> tuple[ConnectionLimits, ConnectionLimits]:
    """(API, ops) connection limits from ``Broker__Limits__*``."""
    lim = settings.security.limits
    api = ConnectionLimits(idle_timeout=lim.idle_timeout_seconds, header_timeout=lim.header_timeout_seconds)
    ops = ConnectionLimits(
        idle_timeout=lim.idle_timeout_seconds,
        header_timeout=lim.header_timeout_seconds,
        max_connections=lim.ops_max_connections,
        max_connections_per_peer=lim.ops_max_connections_per_peer,
        reserve_fds=True,
    )
    return api, ops


async def _bind_all(settings: Settings) -> list[BoundListener]:
    """Open every listener's sockets (API listeners first, then ops); all or none."""
    bound: list[BoundListener] = []
    try:
        for listen in settings.listen:
            bound.append(await bind(listen, listen.key, unix_mode=settings.security.unix_socket_mode))
        if settings.ops_listen is not None:
            bound.append(await bind(settings.ops_listen, settings.ops_listen.key))
    except BaseException:
        for item in bound:
            item.close()
            item.remove_socket_file()
        raise
    return bound


def _protocol_factory(runner: web.BaseRunner) -> web.Server:
    server = runner.server  # aiohttp's public protocol factory, after setup()
    assert server is not None
    return server


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *, wait_ready: float | None = None, tracer: Tracer | None = None
) -> AsyncIterator[RunningBroker]:
    """Start the broker in the current event loop; stop it (gracefully) on exit.

    :raises BindError: a listener cannot be opened (the message names the key and the address).
    :raises ConfigError: e.g. a trust variable names a missing CA bundle.
    """
    bound = await _bind_all(settings)
    api_bound, ops_bound = bound[: len(settings.listen)], bound[len(settings.listen) :]
    api_limits, ops_limits = connection_limits(settings)
    guards = {"api": ConnectionGuard("API", api_limits), "ops": ConnectionGuard("ops", ops_limits)}
    runners: list[web.AppRunner] = []
    servers: list[asyncio.AbstractServer] = []
    runtime: Runtime | None = None
    warm: asyncio.Task[None] | None = None
    try:
        runtime = await Runtime.create(settings, tracer=tracer)
        warm = asyncio.create_task(runtime.warm_up(), name="warm-up")
        api_runner = ProblemAppRunner(
            create_api_app(runtime), shutdown_timeout=SHUTDOWN_GRACE_SECONDS, **guards["api"].server_kwargs()
        )
        await api_runner.setup()
        runners.append(api_runner)
        for item in api_bound:
            servers += await serve(item, guards["api"], _protocol_factory(api_runner))
        ops_url = None
        if ops_bound:
            ops_runner = web.AppRunner(
                create_ops_app(runtime), shutdown_timeout=SHUTDOWN_GRACE_SECONDS, **guards["ops"].server_kwargs()
            )
            await ops_runner.setup()
            runners.append(ops_runner)
            servers += await serve(ops_bound[0], guards["ops"], _protocol_factory(ops_runner))
            ops_url = ops_bound[0].url
        if wait_ready:
            await asyncio.wait_for(runtime.ready_event.wait(), wait_ready)
        yield RunningBroker(runtime, runners, [item.url for item in api_bound], ops_url, guards)
    finally:
        for server in servers:
            server.close()  # stop accepting; open connections are drained below
        for item in bound:
            item.close()
        if warm is not None:
            warm.cancel()
        for runner in runners:
            await runner.cleanup()
        if runtime is not None:
            await runtime.close()
        for item in bound:
            item.remove_socket_file()


async def serve_forever(
    settings: Settings,
    sources: ConfigSources | None = None,
    *,
    signature: Signature | None = None,
    started: Callable[[RunningBroker], None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; in-flight requests get a grace period to finish.

    SIGHUP (and a change of the ``--config`` file) reloads the configuration from ``sources``
    (see :mod:`agent_token_broker.reload`); ``signature`` is the config file's, taken before
    ``settings`` were read. A SIGHUP during start-up is served once the broker runs.
    ``started`` is called once the listeners are open (``dev`` prints its banner there).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloaders: list[ConfigReloader] = []
    early: list[bool] = []

    def on_hangup() -> None:
        if reloaders:
            reloaders[0].request()
        elif sources is None:
            log.warning("SIGHUP ignored: this broker was started without its configuration sources")
        else:
            early.append(True)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    task: asyncio.Task[None] | None = None
    try:
        async with running(settings) as broker:
            if sources is not None:
                reloaders.append(ConfigReloader(broker.runtime, sources, signature=signature))
                task = asyncio.create_task(reloaders[0].run(), name="config-reload")
                if early:
                    reloaders[0].request()
            log.info("API listening on %s; ops on %s", ", ".join(broker.api_urls), broker.ops_url or "off")
            if started is not None:
                started(broker)
            await stop.wait()
            log.info("shutting down")
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until exit: a late SIGHUP must not kill us (129)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine with uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
        return
    uvloop.run(main)
