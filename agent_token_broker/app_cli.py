"""``serve``, ``dev`` and ``check-config`` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from agent_token_broker.logs import setup_logging
from agent_token_broker.reload import ConfigSources, Signature
from agent_token_broker.settings import ConfigError, Settings, effective_config, load_settings


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="appsettings.json-style configuration file (serve, dev: re-read on SIGHUP and when it changes)",
    )
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="set a configuration key (e.g. Broker__Listen=127.0.0.1:5001); repeatable",
    )
    parser.add_argument(
        "--listen", help="API listener (Broker__Listen), e.g. 127.0.0.1:5000 or unix:/run/b.sock"
    )
    parser.add_argument("--ops-listen", help="ops listener (Broker__OpsListen), or 'off'")
    parser.add_argument("--log-level", help="log level (Logging__LogLevel__Default)")


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"--set {item.split('=')[0]!r}: expected KEY=VALUE"])
        overrides[key.strip()] = value
    if args.listen:
        overrides["Broker__Listen"] = args.listen
    if args.ops_listen:
        overrides["Broker__OpsListen"] = args.ops_listen
    if args.log_level:
        overrides["Logging__LogLevel__Default"] = args.log_level
    return overrides


def _load(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings | None:
    """The configuration, with its credential files opened now (one line per problem, then None)."""
    from agent_token_broker.credentials import check_credentials
    from agent_token_broker.trust import trust_problems

    trust = trust_problems(env)  # REQUESTS_CA_BUNDLE / SSL_CERT_FILE
    try:
        settings = load_settings(env=env, config_file=args.config, overrides=_overrides(args))
    except ConfigError as err:
        _print_config_error(ConfigError([*err.problems, *trust]))
        return None
    problems, warnings = check_credentials(settings.azure_ad, os.environ if env is None else env)
    if trust or problems:
        _print_config_error(ConfigError([*problems, *trust]))
        return None
    return dataclasses.replace(settings, warnings=(*settings.warnings, *warnings))


def _print_config_error(err: ConfigError) -> None:
    for line in err.problems:
        print(f"config error: {line}", file=sys.stderr)


def check_config_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="agent-token-broker check-config")
    _common_args(parser)
    args = parser.parse_args(argv)
    settings = _load(args)
    if settings is None:
        return 2
    print(json.dumps(effective_config(settings), indent=2, default=str))
    return 0


def _sources(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> tuple[ConfigSources, Signature | None]:
    """What a reload reads again (the environment as now, the file, the overrides), and the
    file's signature taken before the first read (a change made meanwhile is then seen)."""
    try:
        overrides = _overrides(args)
    except ConfigError:
        overrides = {}  # _load reports it
    sources = ConfigSources(dict(os.environ if env is None else env), args.config, overrides)
    return sources, sources.signature()


def serve_main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload handler is installed
    parser = argparse.ArgumentParser(prog="agent-token-broker serve")
    _common_args(parser)
    args = parser.parse_args(argv)
    sources, signature = _sources(args)
    settings = _load(args)
    if settings is None:
        return 2
    setup_logging(settings.log_level)
    return _serve(settings, sources=sources, signature=signature)


def _stop_before_serving(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(
    settings: Settings,
    main: Coroutine[Any, Any, None] | None = None,
    *,
    sources: ConfigSources | None = None,
    signature: Signature | None = None,
) -> int:
    """Run ``main`` (default: serve until signalled, reloading from ``sources`` on SIGHUP); a
    listener that cannot be opened is one clear line, not a traceback."""
    import logging

    from agent_token_broker.server import run, serve_forever

    log = logging.getLogger("agent_token_broker")
    # SIGTERM is a clean stop from here on, also before the event loop installs its own handler
    # (a supervisor that reacts to the first log line must not kill the process mid-start).
    signal.signal(signal.SIGTERM, _stop_before_serving)
    for warning in settings.warnings:
        log.warning("config: %s", warning)
    try:
        run(main if main is not None else serve_forever(settings, sources, signature=signature))
    except ConfigError as err:  # found while building the runtime
        _print_config_error(err)
        return 2
    except OSError as exc:
        print(f"agent-token-broker: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def dev_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="agent-token-broker dev",
        description="Run the broker wired to the embedded Entra emulator with a demo tenant (offline).",
    )
    _common_args(parser)
    parser.add_argument(
        "--state-dir",
        help="keep the emulator's CA, certificates and keys here between runs "
        "(default: a temporary directory, removed on exit)",
    )
    parser.add_argument("--reset", action="store_true", help="regenerate what --state-dir holds")
    parser.add_argument(
        "--emulator-port", type=int, default=0, help="emulator HTTPS port (default: any free)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reload handler is installed
    from agent_token_broker.dev import merged_environment, serve_dev, state_directory
    from entra_emulator.runner import EmulatorServer

    with state_directory(args.state_dir) as (state_dir, temporary):
        emulator = EmulatorServer(state_dir, port=args.emulator_port, reset_state=args.reset).start()
        try:
            try:
                overrides = _overrides(args)
            except ConfigError as err:
                for line in err.problems:
                    print(f"config error: {line}", file=sys.stderr)
                return 2
            # Trust the emulator's CA (MSAL reads the process environment), before the checks read it.
            os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(emulator.ca_path)
            env = merged_environment(os.environ, emulator, overrides)
            sources, signature = _sources(args, env)
            settings = _load(args, env=env)
            if settings is None:
                return 2
            setup_logging(settings.log_level)
            code = _serve(settings, serve_dev(settings, emulator, temporary, sources, signature))
            if code == 1:
                print(
                    'agent-token-broker dev: choose free ports, e.g. make dev ARGS="--listen 127.0.0.1:5001 '
                    '--ops-listen 127.0.0.1:9465" (or Broker__Listen=... make dev)',
                    file=sys.stderr,
                )
            return code
        finally:
            emulator.stop()
