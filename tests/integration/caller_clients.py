"""Token requests from other users: a small stdlib client run by the system python3 as another uid.

The tests run as root; each client is a child process whose uid (and groups) are set before it
runs (``user=``/``group=``/``extra_groups=``), so the broker sees a genuinely different caller
over a real socket: the Unix socket's ``SO_PEERCRED`` or the TCP loopback peer's socket owner.
The venv's python lives under a directory other users cannot enter, so the client is written to
a world-readable temporary directory and run by ``/usr/bin/python3`` (stdlib only).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

SHARED_GID = 10000  # the group the test Unix socket is given, shared by every client
CLIENT_SECONDS = 20.0
CLIENT = r'''
import http.client, json, socket, sys
target, paths = sys.argv[1], sys.argv[2:]

class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        self.sock.connect(target[len("unix:"):])

conn = UnixConnection("localhost", timeout=15) if target.startswith("unix:") else http.client.HTTPConnection(target, timeout=15)
out = []
for path in paths:  # one kept-alive connection for every request
    conn.request("GET", path, headers={"Host": "localhost"})
    resp = conn.getresponse()
    body = resp.read().decode()
    out.append({"status": resp.status, "body": json.loads(body) if body else None})
print(json.dumps(out))
'''


def system_python() -> str:
    for candidate in ("/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and os.access(candidate, os.X_OK) and not candidate.startswith("/root"):
            return candidate
    pytest.skip("no system python3 other users can run")


@contextmanager
def client_dir() -> Iterator[Path]:
    """A directory every user can read (and, for the Unix socket, reach)."""
    path = Path(tempfile.mkdtemp(prefix="atb-callers-", dir="/tmp"))
    try:
        path.chmod(0o755)
        script = path / "client.py"
        script.write_text(CLIENT, encoding="utf-8")
        script.chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def share_socket(path: Path) -> None:
    """Give the broker's Unix socket (mode 0660) to the clients' shared group."""
    os.chown(path, 0, SHARED_GID)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660


async def run_as(uid: int, directory: Path, target: str, *paths: str) -> tuple[int, list[dict[str, Any]]]:
    """Run the client as ``uid`` (group ``uid``, plus the shared group); returns (pid, answers)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run clients as other users")
    proc = await asyncio.create_subprocess_exec(
        system_python(), str(directory / "client.py"), target, *paths,
        user=uid, group=uid, extra_groups=[SHARED_GID], cwd=str(directory),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLIENT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-2000:]
    return proc.pid, json.loads(out)
