"""The owner of a TCP socket from ``/proc/net/tcp`` and ``/proc/net/tcp6`` (the fallback lookup).

Each line of those tables is one socket of this network namespace (a pod's containers share
one): ``sl local_address rem_address st ... uid timeout inode ...``, addresses as hex words in
host byte order and ports as 4 hex digits. The caller's socket is the one whose *local* end is
our peer's address and port and whose *remote* end is the address and port the connection
arrived on. Reading the table makes the kernel walk its whole socket hash (about 4 ms of CPU
on a test machine holding 240 sockets, whatever their number), so the broker asks
:mod:`~agent_token_broker.callers.sockdiag` first and reads this only when netlink is not
available. Pure functions, plus one bounded read.
"""

from __future__ import annotations

import socket
import struct

TABLES: dict[int, str] = {socket.AF_INET: "/proc/net/tcp", socket.AF_INET6: "/proc/net/tcp6"}
MAX_TABLE_BYTES = 64 * 1024 * 1024  # ~430k sockets; past that the lookup gives up
_WORD = struct.Struct("=I")


def endpoint(family: int, address: str, port: int) -> bytes:
    """``address:port`` as the tables print it (``127.0.0.1:8080`` -> ``0100007F:1F90`` on x86)."""
    packed = socket.inet_pton(family, address.split("%", 1)[0])
    words = "".join(f"{_WORD.unpack_from(packed, i)[0]:08X}" for i in range(0, len(packed), 4))
    return f"{words}:{port:04X}".encode()


def find_owner(table: bytes, local: bytes, remote: bytes) -> tuple[int, int] | None:
    """``(uid, inode)`` of the socket whose ends are ``local`` and ``remote`` (see :func:`endpoint`),
    or None. ``table`` is the text of ``/proc/net/tcp`` or ``tcp6``."""
    needle = b" " + local + b" " + remote + b" "
    at = table.find(needle)
    if at < 0:
        return None
    end = table.find(b"\n", at)
    fields = table[at : end if end >= 0 else len(table)].split()
    # local remote st tx:rx tr:when retrnsmt uid timeout inode
    try:
        return int(fields[6]), int(fields[8])
    except (IndexError, ValueError):
        return None


def owner(family: int, peer: tuple[str, int], local: tuple[str, int]) -> tuple[int, int] | None:
    """``(uid, inode)`` of the peer's socket of a connection that arrived on ``local``, or None."""
    path = TABLES.get(family)
    if path is None:
        return None
    try:
        with open(path, "rb") as file:  # a kernel table: never blocks on I/O
            table = file.read(MAX_TABLE_BYTES)
    except OSError:
        return None
    return find_owner(table, endpoint(family, *peer), endpoint(family, *local))
