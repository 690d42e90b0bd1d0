"""Caller identity: the pure encoders/parsers of the socket tables, and real lookups of real sockets
(a Unix socket pair, a TCP loopback connection) through netlink sock_diag and /proc/net/tcp."""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Iterator

import pytest

from agent_token_broker.callers import identity as ident
from agent_token_broker.callers import procnet, sockdiag
from agent_token_broker.callers.identity import CallerIdentity, identify


def test_endpoint_encoding_is_the_tables_host_order_hex() -> None:
    if sys.byteorder == "little":
        assert procnet.endpoint(socket.AF_INET, "127.0.0.1", 8080) == b"0100007F:1F90"
        assert procnet.endpoint(socket.AF_INET6, "::1", 443) == b"00000000000000000000000001000000:01BB"
    else:
        assert procnet.endpoint(socket.AF_INET, "127.0.0.1", 8080) == b"7F000001:1F90"


SAMPLE = (
    b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    b"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1681 1 0 100 0 0 10 0\n"
    b"   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 10010        0 99123 1 0 20 4 30 10 -1\n"
    b"   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 99124 1 0 20 4 30 10 -1\n"
)


def test_find_owner_matches_local_and_remote_ends_exactly() -> None:
    # the caller's socket: local = its port 0xD431, remote = our 0x1F90
    assert procnet.find_owner(SAMPLE, b"0100007F:D431", b"0100007F:1F90") == (10010, 99123)
    # the reversed pair is our own accepted socket (uid 0), never taken for the caller's
    assert procnet.find_owner(SAMPLE, b"0100007F:1F90", b"0100007F:D431") == (0, 99124)
    assert procnet.find_owner(SAMPLE, b"0100007F:D432", b"0100007F:1F90") is None
    assert procnet.find_owner(b"", b"0100007F:D431", b"0100007F:1F90") is None


def test_sock_diag_request_encodes_the_four_tuple() -> None:
    msg = sockdiag.request(socket.AF_INET, ("127.0.0.1", 54321), ("127.0.0.1", 8080), seq=7)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), sockdiag.SOCK_DIAG_BY_FAMILY, sockdiag.NLM_F_REQUEST, 7)
    family, proto = struct.unpack_from("=BB", msg, 16)
    assert (family, proto) == (socket.AF_INET, socket.IPPROTO_TCP)
    assert struct.unpack_from("!HH", msg, 24) == (54321, 8080)
    assert msg[28:32] == socket.inet_aton("127.0.0.1")


def test_sock_diag_parse_reads_uid_and_inode_and_enoent() -> None:
    body = struct.pack("=BBBB", 2, 1, 0, 0) + bytes(48) + struct.pack("=IIIII", 0, 0, 0, 10020, 4242)
    answer = struct.pack("=IHHII", 16 + len(body), sockdiag.SOCK_DIAG_BY_FAMILY, 0, 9, 0) + body
    assert sockdiag.parse(answer, 9) == (10020, 4242)
    enoent = struct.pack("=IHHII", 20, sockdiag.NLMSG_ERROR, 0, 9, 0) + struct.pack("=i", -2)
    assert sockdiag.parse(enoent, 9) is None
    eperm = struct.pack("=IHHII", 20, sockdiag.NLMSG_ERROR, 0, 9, 0) + struct.pack("=i", -1)
    with pytest.raises(OSError):
        sockdiag.parse(eperm, 9)


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6])
def tcp_pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    family = request.param
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    server = socket.socket(family)
    try:
        server.bind((host, 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server.listen()
    client = socket.socket(family)
    client.connect(server.getsockname()[:2])
    accepted, _ = server.accept()
    try:
        yield client, accepted
    finally:
        for s in (client, accepted, server):
            s.close()


def test_sock_diag_and_proc_find_the_peer_socket_owner(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = tcp_pair
    inode = os.fstat(client.fileno()).st_ino
    peer, local = accepted.getpeername()[:2], accepted.getsockname()[:2]
    diag = sockdiag.SockDiag()
    try:
        assert diag.owner(accepted.family, peer, local) == (os.getuid(), inode)
    finally:
        diag.close()
    assert procnet.owner(accepted.family, peer, local) == (os.getuid(), inode)


def test_identify_tcp_loopback_once_with_sock_diag(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = tcp_pair
    found = identify(accepted, accepted.getpeername(), accepted.getsockname())
    assert found.transport == "tcp"
    assert found.uid == os.getuid()
    assert found.source == "sock_diag"
    assert found.inode == os.fstat(client.fileno()).st_ino
    assert found.pid is None and found.gid is None
    assert found.peer.endswith(f":{accepted.getpeername()[1]}")


def test_identify_falls_back_to_proc_when_netlink_is_refused(
    tcp_pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    _client, accepted = tcp_pair
    monkeypatch.setattr(ident._diag, "available", False)
    found = identify(accepted, accepted.getpeername(), accepted.getsockname())
    assert (found.uid, found.source) == (os.getuid(), "proc")


def test_identify_unix_peer_from_peercred() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        found = identify(a, a.getpeername(), a.getsockname())
    finally:
        a.close()
        b.close()
    assert found == CallerIdentity(
        "unix", uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), peer="unix", source="peercred"
    )


def test_non_loopback_and_unknown_peers_have_no_uid() -> None:
    sock = socket.socket()
    try:
        assert identify(sock, ("10.0.0.9", 1234), ("10.0.0.1", 5000)) == CallerIdentity("tcp", peer="10.0.0.9:1234")
        assert identify(sock, None, None) == CallerIdentity("tcp", peer="unknown")
    finally:
        sock.close()
