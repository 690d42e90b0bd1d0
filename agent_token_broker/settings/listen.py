"""Parsing listener addresses: ``host:port``, ``[v6]:port``, ``http://host:port``, ``unix:/path``."""

from __future__ import annotations

import ipaddress

from agent_token_broker.settings.model import Listen

_WILDCARDS = {"+", "*"}


class ListenError(ValueError):
    """A listener address that cannot be used (message is safe to show)."""


def parse_listen(text: str) -> tuple[Listen, str | None]:
    """Parse one address; returns the listener and an optional warning.

    Accepted forms: ``127.0.0.1:5000``, ``[::1]:5000``, ``localhost:5000``,
    ``http://127.0.0.1:5000``, ``http://+:5000`` / ``http://*:5000`` (all IPv4
    interfaces, with a warning), ``unix:/run/broker.sock`` and
    ``http://unix:/run/broker.sock`` (Kestrel's form).
    """
    value = text.strip()
    lowered = value.lower()
    for prefix in ("http://unix:", "unix:"):
        if lowered.startswith(prefix):
            path = value[len(prefix) :]
            if not path.startswith("/"):
                raise ListenError(f"unix socket path must be absolute, got {path!r}")
            return Listen("unix", path=path.rstrip("/") or path), None
    if "://" in value:
        scheme = lowered.split("://", 1)[0]
        if scheme == "https":
            raise ListenError("https listeners are not supported; terminate TLS elsewhere or use http/unix")
        if scheme != "http":
            raise ListenError(f"unsupported scheme {scheme!r}")
        rest = value.split("://", 1)[1]
        hostport = rest.split("/", 1)[0]
        if "@" in hostport:
            raise ListenError("a listen URL must not contain user information")
        default_port: int | None = 80
    else:
        hostport = value
        default_port = None
    host, port = _split_hostport(hostport, default_port)
    warning = None
    if host in _WILDCARDS:
        warning = f"{value!r} listens on all IPv4 interfaces (0.0.0.0)"
        host = "0.0.0.0"  # noqa: S104 - requested explicitly by the operator
    else:
        _check_host(host)
    return Listen("tcp", host=host, port=port), warning


def _split_hostport(hostport: str, default_port: int | None) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ListenError(f"unbalanced '[' in {hostport!r}")
        host, tail = hostport[1:end], hostport[end + 1 :]
        if tail and not tail.startswith(":"):
            raise ListenError(f"expected ':port' after ']' in {hostport!r}")
        port_text = tail[1:] if tail else ""
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
    elif ":" in hostport:
        raise ListenError(f"IPv6 addresses must be in brackets, e.g. [::1]:5000, got {hostport!r}")
    else:
        host, port_text = hostport, ""
    if not host:
        raise ListenError(f"missing host in {hostport!r}")
    if port_text == "":
        if default_port is None:
            raise ListenError(f"missing port in {hostport!r} (expected host:port)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenError(f"invalid port {port_text!r}")
    return host, int(port_text)


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels):
        raise ListenError(f"invalid host {host!r}")


def parse_listen_list(text: str) -> tuple[list[Listen], list[str]]:
    """Parse a ``;``-separated list (as ``ASPNETCORE_URLS``); empty items are skipped."""
    listeners: list[Listen] = []
    warnings: list[str] = []
    for item in text.split(";"):
        if item.strip():
            listen, warning = parse_listen(item)
            listeners.append(listen)
            if warning:
                warnings.append(warning)
    return listeners, warnings
