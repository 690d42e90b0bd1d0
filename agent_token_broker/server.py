"""Run the broker: API and ops listeners, graceful shutdown on SIGTERM/SIGINT, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent_token_broker.api.app import create_ops_app, parser_limits
from agent_token_broker.api.front import ApiFront
from agent_token_broker.api.protocol import protocol_factory
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
    runners: list[web.BaseRunner]
    api_urls: list[str]
    ops_url: str | None
    guards: dict[str, ConnectionGuard] = field(default_factory=dict)  # "api", "ops"
    api: ApiFront | None = None  # the API listener's handler (its routes: api.routes())


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


async def _freeze_when_ready(runtime: Runtime) -> None:
    """Once started and warmed up: collect, then move every object that survived into the GC's
    permanent generation (``gc.freeze()``), so collections no longer walk the broker's long-lived
    objects (settings, MSAL apps, tables, cached tokens of the warm-up) while requests wait."""
    await runtime.ready_event.wait()
    gc.collect()
    gc.freeze()
    log.debug("gc.freeze(): %d objects moved to the permanent generation", gc.get_freeze_count())


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
    runners: list[web.BaseRunner] = []
    servers: list[asyncio.AbstractServer] = []
    runtime: Runtime | None = None
    front: ApiFront | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        runtime = await Runtime.create(settings, tracer=tracer)
        runtime.metrics.connection_counts = lambda: {name: g.stats.by_reason() for name, g in guards.items()}
        tasks.append(asyncio.create_task(runtime.warm_up(), name="warm-up"))
        # The API listener: aiohttp's low-level server and one handler (no Application, router or
        # middlewares); connections are ApiProtocol (per-connection caller, problem+json HTTP errors).
        front = ApiFront(runtime)
        api_kwargs: dict[str, Any] = {**guards["api"].server_kwargs(), **parser_limits(settings)}
        api_server = web.Server(front.handler, **api_kwargs)
        api_runner = web.ServerRunner(api_server, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
        await api_runner.setup()
        runners.append(api_runner)
        await front.start()
        for item in api_bound:
            servers += await serve(item, guards["api"], protocol_factory(api_server, **api_kwargs))
        ops_url = None
        if ops_bound:
            ops_runner = web.AppRunner(
                create_ops_app(runtime), shutdown_timeout=SHUTDOWN_GRACE_SECONDS, **guards["ops"].server_kwargs()
            )
            await ops_runner.setup()
            runners.append(ops_runner)
            servers += await serve(ops_bound[0], guards["ops"], _protocol_factory(ops_runner))
            ops_url = ops_bound[0].url
        tasks.append(asyncio.create_task(_freeze_when_ready(runtime), name="gc-freeze"))
        if wait_ready:
            await asyncio.wait_for(runtime.ready_event.wait(), wait_ready)
        yield RunningBroker(runtime, runners, [item.url for item in api_bound], ops_url, guards, front)
    finally:
        for server in servers:
            server.close()  # stop accepting; open connections are drained below
        for item in bound:
            item.close()
        for task in tasks:
            task.cancel()
        for runner in runners:
            await runner.cleanup()
        if front is not None:
            await front.stop()
        gc.unfreeze()  # (several brokers may run in one process, e.g. the tests)
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
