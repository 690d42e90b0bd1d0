"""Reload without restart: ``SIGHUP``, or a changed ``--config`` file, re-reads the configuration.

The configuration is read again from the sources the broker started with (the environment as
it was at start, the ``--config`` file, the ``--set`` overrides) and validated as at start. An
invalid one is refused with one log line and the running configuration stays in force.
Otherwise :meth:`agent_token_broker.runtime.Runtime.apply_settings` puts the *live* keys in force
(the token cache is kept) and the report names, by key, what was applied and what needs a
restart (listeners, the blueprint's identity and credentials, Redis, ...: every key not declared
``live``; see ``settings/changes.py``). Reloads are counted in
``agent_token_broker_config_reloads_total{result}``.

Reading happens off the event loop, with a bounded read of regular files only (a FIFO or a
stuck mount is a refused reload, not a hung broker). Reload requests that arrive while one
runs are folded into one more reload after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent_token_broker.fileio import FileTimeout, read_file, run_off_loop, stat_file
from agent_token_broker.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from agent_token_broker.runtime import Runtime

log = logging.getLogger("agent_token_broker.reload")

APPLIED, UNCHANGED, RESTART_REQUIRED, REJECTED = "applied", "unchanged", "restart_required", "rejected"
RESULTS = (APPLIED, UNCHANGED, RESTART_REQUIRED, REJECTED)
READ_TIMEOUT_SECONDS = 5.0
Signature = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


@dataclass(frozen=True)
class ReloadReport:
    """The outcome of one reload.

    ``result``: ``applied`` (live keys changed and are in force), ``restart_required`` (only keys
    that need a restart changed; nothing applied), ``unchanged`` or ``rejected`` (invalid: nothing
    applied). ``applied`` / ``restart`` name the changed keys; ``problems`` why it was refused.
    """

    result: str
    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def message(self, trigger: str = "reload") -> str:
        """One log line: what was applied, what needs a restart, or why it was refused."""
        if self.result == REJECTED:
            return (
                f"configuration {trigger} refused, the running configuration stays in force: "
                + "; ".join(self.problems)
            )
        if self.result == UNCHANGED:
            return f"configuration {trigger}: no change"
        parts = [f"applied {', '.join(self.applied)}"] if self.applied else ["nothing applied"]
        if self.restart:
            parts.append(f"needs a restart to take effect (running value kept): {', '.join(self.restart)}")
        return f"configuration {trigger}: " + "; ".join(parts)


@dataclass(frozen=True)
class ConfigSources:
    """Where the configuration came from at start: read again, the same way, on every reload."""

    env: Mapping[str, str]
    config_file: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)

    def signature(self) -> Signature | None:
        """The config file's identity and stamps (``stat`` follows the ConfigMap symlinks);
        None when there is no file or it cannot be stat'ed. Blocking: call off the loop."""
        if self.config_file is None:
            return None
        try:
            st = stat_file(self.config_file, timeout=READ_TIMEOUT_SECONDS)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def load(self) -> Settings:
        """Read and validate the configuration. Blocking: call off the loop.

        :raises ConfigError: one line per problem, each naming its key (never a secret).
        """
        data = None
        if self.config_file is not None:
            try:
                data = read_file(self.config_file, timeout=READ_TIMEOUT_SECONDS)
            except FileTimeout:
                raise ConfigError([f"--config {self.config_file}: not readable within {READ_TIMEOUT_SECONDS:g} s"]) from None
            except OSError as exc:
                reason = exc.strerror or str(exc).removeprefix(f"{self.config_file}: ")
                raise ConfigError([f"--config {self.config_file}: cannot read file ({reason})"]) from None
        return load_settings(env=self.env, config_file=self.config_file, overrides=self.overrides, config_data=data)


def _load_checked(sources: ConfigSources, running: Settings) -> Settings:
    """The new configuration, with the start-up checks of credentials it changed."""
    from agent_token_broker.credentials import check_credentials

    new = sources.load()
    if new.azure_ad.credentials != running.azure_ad.credentials:
        problems, warnings = check_credentials(new.azure_ad, sources.env)
        if problems:
            raise ConfigError(problems)
        new = dataclasses.replace(new, warnings=(*new.warnings, *warnings))
    return new


class ConfigReloader:
    """Reloads ``runtime``'s configuration on request (SIGHUP) and when the config file changes."""

    def __init__(self, runtime: Runtime, sources: ConfigSources, *, signature: Signature | None = None) -> None:
        """``signature``: the config file's, taken before the configuration in force was read."""
        self.runtime = runtime
        self.sources = sources
        self._wanted = asyncio.Event()
        self._trigger = "reload"
        self._signature = signature
        self._signed = signature is not None
        self.done = 0  # reloads finished (tests wait on it)
        self.last: ReloadReport | None = None

    def request(self, trigger: str = "reload (SIGHUP)") -> None:
        """Ask for a reload (signal handlers call this); requests while one runs fold into one."""
        self._trigger = trigger
        self._wanted.set()

    async def run(self) -> None:
        """Serve reload requests and watch the config file until cancelled."""
        watch = asyncio.create_task(self._watch(), name="config-watch") if self.sources.config_file else None
        try:
            while True:
                await self._wanted.wait()
                self._wanted.clear()
                await self.reload(self._trigger)
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch

    async def reload(self, trigger: str = "reload") -> ReloadReport:
        """Read the configuration again and apply it; log one line and count it."""
        running = self.runtime.settings
        signature = await run_off_loop(self.sources.signature)
        try:
            new = await run_off_loop(lambda: _load_checked(self.sources, running))
        except ConfigError as err:
            # A file that cannot be read or parsed: that is the problem (not every key it lacks).
            problems = [p for p in err.problems if p.startswith("--config ")] or err.problems
            report = ReloadReport(REJECTED, problems=tuple(problems))
        else:
            report = self.runtime.apply_settings(new)
            new_warnings = [w for w in new.warnings if w not in running.warnings]
            for warning in new_warnings:
                log.warning("config: %s", warning)
        self._signature, self._signed = signature, True
        level = logging.INFO if report.result in (APPLIED, UNCHANGED) and not report.restart else logging.WARNING
        log.log(level, report.message(trigger))
        self.runtime.metrics.config_reloaded(report.result, restart_pending=bool(self.runtime.restart_pending))
        self.done += 1
        self.last = report
        return report

    async def _watch(self) -> None:
        """Poll the config file's ``stat`` (off the loop) every ``Broker__ConfigWatchSeconds``."""
        if not self._signed:
            self._signature, self._signed = await run_off_loop(self.sources.signature), True
        while True:
            period = self.runtime.settings.config_watch_seconds
            await asyncio.sleep(period if period > 0 else 1.0)  # off: look again whether a reload turned it on
            if period <= 0 or self._wanted.is_set():
                continue
            signature = await run_off_loop(self.sources.signature)
            if signature != self._signature:
                self._signature = signature
                self.request("reload (config file changed)")

