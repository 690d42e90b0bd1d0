"""A connection's caller: who is at the other end, found once when the connection is first used.

* Unix socket: uid, gid and pid from ``SO_PEERCRED`` (the kernel's record of the process that
  connected).
* TCP loopback: the uid owning the peer's socket, from the kernel's socket table of this network
  namespace (a pod's containers share one): an exact netlink ``sock_diag`` lookup
  (:mod:`.sockdiag`, about 6 µs), else a scan of ``/proc/net/tcp``/``tcp6`` (:mod:`.procnet`,
  milliseconds). The gid is not recorded there. **No pid for TCP callers**: it would take a
  walk of every ``/proc/<pid>/fd`` for the socket's inode (cost: processes times descriptors),
  which needs ptrace rights over the caller (a non-root broker has none over another uid) and
  finds nothing across the per-container pid namespaces of a pod; the inode is kept instead.
* Other peers (``Broker__AllowedCallers`` networks): no uid; the address alone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

from agent_token_broker.callers import procnet
from agent_token_broker.callers.sockdiag import SockDiag

_PEERCRED = struct.Struct("3i")
UNKNOWN = -1


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """What the kernel says about a connection's peer. ``source``: how the uid was found
    (``peercred``, ``sock_diag``, ``proc``, or ``none``)."""

    transport: str  # "unix" | "tcp"
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    peer: str = ""  # "127.0.0.1:54321", "[::1]:54321" or "unix"
    inode: int | None = None  # the peer's socket (TCP), for correlation with `ss -e`
    source: str = "none"

    def describe(self) -> str:
        """``uid 10010`` / ``uid unknown`` for messages."""
        return f"uid {self.uid}" if self.uid is not None else "uid unknown"


UNIX_UNKNOWN = CallerIdentity("unix", peer="unix")
_diag = SockDiag()


def unix_credentials(sock: Any) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of a Unix-socket peer (``SO_PEERCRED``), or None."""
    try:
        pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (AttributeError, OSError):
        return None
    return pid, uid, gid


def _peer_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tcp_owner(family: int, peer: tuple[str, int], local: tuple[str, int]) -> tuple[int, int, str] | None:
    """``(uid, inode, source)`` of the loopback peer's socket, or None."""
    if _diag.available:
        with contextlib.suppress(OSError):
            found = _diag.owner(family, peer, local)
            return (*found, "sock_diag") if found is not None else None
    found = procnet.owner(family, peer, local)
    return (*found, "proc") if found is not None else None


def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def identify(sock: Any, peername: Any, sockname: Any) -> CallerIdentity:
    """The caller at the other end of a connection (``sock``: the transport's socket)."""
    family = getattr(sock, "family", None)
    if family == socket.AF_UNIX:
        creds = unix_credentials(sock)
        if creds is None:
            return UNIX_UNKNOWN
        pid, uid, gid = creds
        return CallerIdentity("unix", uid=uid, gid=gid, pid=pid if pid > 0 else None, peer="unix", source="peercred")
    if not (isinstance(peername, tuple) and len(peername) >= 2 and isinstance(sockname, tuple)):
        return CallerIdentity("tcp", peer="unknown")
    host, port = str(peername[0]), int(peername[1])
    text = _peer_text(host.split("%", 1)[0], port)
    if family not in (socket.AF_INET, socket.AF_INET6) or not _loopback(host):
        return CallerIdentity("tcp", peer=text)
    found = tcp_owner(family, (host, port), (str(sockname[0]), int(sockname[1])))
    if found is None:
        return CallerIdentity("tcp", peer=text)
    uid, inode, source = found
    return CallerIdentity("tcp", uid=uid, peer=text, inode=inode, source=source)


def identify_transport(transport: Any) -> CallerIdentity:
    """:func:`identify` for an asyncio transport."""
    get = transport.get_extra_info
    return identify(get("socket"), get("peername"), get("sockname"))
