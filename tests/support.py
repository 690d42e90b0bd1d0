"""Helpers shared by tests that start real servers: free loopback ports, required system binaries."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str, package: str) -> str:
    """The binary's path. Missing: FAIL as root (CI installs it), skip loudly otherwise."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        reason = f"{name} not installed: apt-get install -y {package} (scripts/ensure-system-packages)"
        if os.geteuid() == 0:
            pytest.fail(reason)
        pytest.skip("SKIPPED LOUDLY: " + reason)
    return path
