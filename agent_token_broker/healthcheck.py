"""``agent-token-broker healthcheck``: probe the ops listener of a running broker (exec probes, HEALTHCHECK).

Exit codes: ``0`` the probe answered 200; ``1`` it did not (refused, timed out, another status,
or the ops listener is switched off), with one line on stderr saying why. Command-line mistakes
exit ``2`` (argparse). Docker reserves exit code 2 for itself, so a HEALTHCHECK only ever sees
0 or 1 from a well-formed command.

The address is the broker's own ``Broker__OpsListen``, read from the same sources and with the
same precedence as ``serve`` (``--config`` file < environment < ``--set``/``--ops-listen``), so the
probe follows the broker when the port is moved. A wildcard address (``0.0.0.0``, ``::``) is
probed on loopback. No proxy variable applies: the connection is made directly.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import sys
from collections.abc import Mapping, Sequence

from agent_token_broker.settings.listen import ListenError, parse_listen
from agent_token_broker.settings.model import DEFAULT_OPS_LISTEN, Listen
from agent_token_broker.settings.tree import build_tree

PATHS = {"live": "/healthz", "ready": "/readyz"}
_OFF = ("", "off", "none", "false")


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (an ops listener configured as ``unix:/path``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def ops_listener(
    env: Mapping[str, str], config_file: str | None, overrides: Mapping[str, str]
) -> Listen | str | None:
    """The broker's ops listener from its configuration sources; ``None`` when off, a message when invalid."""
    tree = build_tree(env, config_file, overrides)
    if tree.problems:
        return tree.problems[0]
    broker = tree.root.child("Broker")
    node = broker.child("OpsListen") if broker is not None else None
    if node is None or node.value is None:
        return DEFAULT_OPS_LISTEN
    if node.value.strip().lower() in _OFF:
        return None
    try:
        listen, _ = parse_listen(node.value)
    except ListenError as exc:
        return f"Broker__OpsListen: {exc}"
    return listen


def probe(listen: Listen, path: str, timeout: float) -> str | None:
    """``None`` when ``GET path`` answers 200, else the reason (safe to print)."""
    if listen.kind == "unix":
        assert listen.path is not None
        connection: http.client.HTTPConnection = _UnixConnection(listen.path, timeout)
        where = f"unix:{listen.path}"
    else:
        host = listen.host or "127.0.0.1"
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
        connection = http.client.HTTPConnection(host, listen.port, timeout=timeout)
        where = f"[{host}]:{listen.port}" if ":" in host else f"{host}:{listen.port}"
    try:
        connection.request("GET", path, headers={"User-Agent": "agent-token-broker-healthcheck"})
        response = connection.getresponse()
        response.read(4096)
    except TimeoutError:
        return f"{where}{path}: no answer within {timeout:g} s"
    except OSError as exc:
        return f"{where}{path}: {exc.strerror or type(exc).__name__}"
    except http.client.HTTPException as exc:
        return f"{where}{path}: bad HTTP answer ({type(exc).__name__})"
    finally:
        connection.close()
    if response.status != 200:
        return f"{where}{path}: HTTP {response.status}"
    return None


def healthcheck_main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agent-token-broker healthcheck",
        description="Exit 0 when the running broker's ops listener answers /healthz (or /readyz) with 200, "
        "else 1 with the reason on stderr.",
    )
    parser.add_argument("--config", metavar="FILE", help="the appsettings.json the broker was started with")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], help="as given to serve; repeatable"
    )
    parser.add_argument("--ops-listen", help="the ops listener address (Broker__OpsListen) to probe")
    parser.add_argument(
        "--probe", choices=sorted(PATHS), default="live", help="live: /healthz (default); ready: /readyz"
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)"
    )
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error("--timeout must be greater than 0")
    overrides: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set {item.split('=')[0]!r}: expected KEY=VALUE")
        overrides[key.strip()] = value
    if args.ops_listen:
        overrides["Broker__OpsListen"] = args.ops_listen
    listen = ops_listener(os.environ if env is None else env, args.config, overrides)
    if isinstance(listen, str):
        print(f"healthcheck: {listen}", file=sys.stderr)
        return 1
    if listen is None:
        print("healthcheck: the ops listener is off (Broker__OpsListen); nothing to probe", file=sys.stderr)
        return 1
    problem = probe(listen, PATHS[args.probe], args.timeout)
    if problem is not None:
        print(f"healthcheck: unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0
