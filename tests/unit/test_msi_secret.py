"""The managed-identity endpoint's X-IDENTITY-HEADER secret read from its file: at most one look
at the file per second (a request costs no file access), and a rotated secret in force after it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_token_broker.api.msi import IdentityHeaderSecret
from agent_token_broker.settings import ManagedIdentityEndpointConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str) -> None:
    aside = path.with_name(path.name + ".new")
    aside.write_text(text + "\n")
    os.chmod(aside, 0o600)
    os.replace(aside, path)  # a new inode and stamp, as a Secret volume update does


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o700)
    path = directory / "identity-header"
    _write(path, "first-secret-first-secret")
    return path


def _secret(path: Path, clock: Clock) -> IdentityHeaderSecret:
    return IdentityHeaderSecret(ManagedIdentityEndpointConfig(enabled=True, secret_file=str(path)), clock=clock)


async def test_the_file_is_looked_at_once_a_second_and_a_rotation_is_then_in_force(secret_file: Path) -> None:
    clock = Clock()
    secret = _secret(secret_file, clock)
    assert await secret.matches("first-secret-first-secret")
    _write(secret_file, "second-secret-second-secret")
    clock.now += 0.9  # within the second: the value in force, no look at the file
    assert await secret.matches("first-secret-first-secret")
    assert not await secret.matches("second-secret-second-secret")
    clock.now += 0.2  # a second after the last look: the file is looked at again
    assert await secret.matches("second-secret-second-secret")
    assert not await secret.matches("first-secret-first-secret")
    assert not await secret.matches("") and not await secret.matches(None)


async def test_an_unreadable_file_keeps_the_secret_in_force(secret_file: Path) -> None:
    clock = Clock()
    secret = _secret(secret_file, clock)
    secret_file.unlink()
    os.mkfifo(secret_file)  # would block a plain open(); the bounded read refuses it at once
    clock.now += 5
    assert await secret.matches("first-secret-first-secret")
