"""Parsing listener addresses: ``host:port``, ``[v6]:port``, ``http://host:port``, ``unix:/path``."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Literal

from agent_token_broker.settings.schema import Warned


@dataclass(frozen=True)
class Listen:
    """One listener: TCP ``host:port`` or a Unix socket ``path``."""

    kind: Literal["tcp", "unix"]
    host: str | None = None
    port: int | None = None
    path: str | None = None
    key: str = field(default="Broker__Listen", compare=False)  # where it was configured (bind errors)

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"

    def collides(self, other: Listen) -> bool:
        """Would binding both fail (same socket path, or one TCP port on overlapping addresses)?"""
        if self.kind != other.kind:
            return False
        if self.kind == "unix":
            return self.path == other.path
        if not self.port or self.port != other.port:
            return False  # port 0 picks a free port

        def covers(a: str, b: str) -> bool:  # "::" is dual-stack; "localhost" binds both loopbacks
            return (
                a == b
                or a == "::"
                or (a == "0.0.0.0" and ":" not in b)  # noqa: S104 - compared, not bound
                or (a == "localhost" and b in ("127.0.0.1", "::1"))
            )

        mine, theirs = (self.host or "").lower(), (other.host or "").lower()
        return covers(mine, theirs) or covers(theirs, mine)


DEFAULT_LISTEN = Listen("tcp", "127.0.0.1", 5000)
DEFAULT_OPS_LISTEN = Listen("tcp", "0.0.0.0", 9464, key="Broker__OpsListen")  # noqa: S104 - metrics port, by design


class ListenError(ValueError):
    """A listener address that cannot be used (message is safe to show)."""


def parse_listen(text: str) -> tuple[Listen, str | None]:
    """Parse one address; returns the listener and an optional warning.

    Accepted forms: ``127.0.0.1:5000``, ``[::1]:5000``, ``localhost:5000``, ``http://127.0.0.1:5000``,
    ``http://+:5000`` / ``http://*:5000`` (all IPv4 interfaces, with a warning), ``unix:/run/broker.sock``
    and ``http://unix:/run/broker.sock`` (Kestrel's form).
    """
    value = text.strip()
    unix = re.match(r"(?i)^(http://)?unix:", value)
    if unix:
        path = value[unix.end() :]
        if not path.startswith("/"):
            raise ListenError(f"unix socket path must be absolute, got {path!r}")
        return Listen("unix", path=path.rstrip("/") or path), None
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() == "https":
        raise ListenError("https listeners are not supported; terminate TLS elsewhere or use http/unix")
    if sep and scheme.lower() != "http":
        raise ListenError(f"unsupported scheme {scheme.lower()!r}")
    hostport = rest.split("/", 1)[0] if sep else value
    if "@" in hostport:
        raise ListenError("a listen URL must not contain user information")
    host, port = _split_hostport(hostport, 80 if sep else None)
    if host in ("+", "*"):
        return Listen("tcp", "0.0.0.0", port), f"{value!r} listens on all IPv4 interfaces (0.0.0.0)"  # noqa: S104
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in host.rstrip(".").split(".")):
            raise ListenError(f"invalid host {host!r}") from None
    return Listen("tcp", host=host, port=port), None


def _split_hostport(hostport: str, default_port: int | None) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket:
            raise ListenError(f"unbalanced '[' in {hostport!r}")
        if tail and not tail.startswith(":"):
            raise ListenError(f"expected ':port' after ']' in {hostport!r}")
        port_text = tail[1:]
    elif hostport.count(":") > 1:
        raise ListenError(f"IPv6 addresses must be in brackets, e.g. [::1]:5000, got {hostport!r}")
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise ListenError(f"missing host in {hostport!r}")
    if not port_text:
        if default_port is None:
            raise ListenError(f"missing port in {hostport!r} (expected host:port)")
        return host, default_port
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ListenError(f"invalid port {port_text!r}")
    return host, int(port_text)


def listen_item(text: str) -> Listen | Warned:
    """One listener address as a configuration value (a wildcard host carries its warning)."""
    listen, warning = parse_listen(text)
    return Warned(listen, warning) if warning else listen


def ops_listen(text: str) -> Listen | None:
    """``Broker__OpsListen``: an address, or ``off`` (also ``none``, ``false``, empty) for none."""
    if text.strip().lower() in ("", "off", "none", "false"):
        return None
    return replace(parse_listen(text)[0], key="Broker__OpsListen")
