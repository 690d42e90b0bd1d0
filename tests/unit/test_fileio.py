"""Bounded file I/O (agent_token_broker/fileio.py): real files, FIFOs and threads; no sockets."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from agent_token_broker import fileio
from agent_token_broker.fileio import FileTimeout, NotRegularFile, read_file, run_off_loop


def test_regular_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_000)
    assert read_file(str(path)) == b"x" * 100_000
    with pytest.raises(OSError, match="larger than"):
        read_file(str(path), max_bytes=10)
    with pytest.raises(FileNotFoundError):
        read_file(str(tmp_path / "missing"))


def test_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(NotRegularFile):
        read_file(str(fifo), timeout=30)
    assert time.monotonic() - started < 5  # refused, not waited on until the timeout


def test_a_call_that_never_returns_times_out_and_blocks_no_one(tmp_path: Path) -> None:
    stuck = threading.Event()  # stands for a stat() on a dead NFS server
    key = str(tmp_path / "on-a-stuck-mount")
    try:
        with pytest.raises(FileTimeout, match=r"no answer within 0\.2 s"):
            fileio._bounded(key, stuck.wait, 0.2)
        # While that call is still stuck, the same path fails at once (no pile of threads)...
        with pytest.raises(FileTimeout, match="earlier access has not returned"):
            fileio._bounded(key, lambda: True, 5)
    finally:
        stuck.set()
    deadline = time.monotonic() + 5
    while key in fileio._stuck and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fileio._bounded(key, lambda: 42, 5) == 42  # ...and works again once it returned


def test_concurrent_calls_share_the_access_in_flight_instead_of_failing(tmp_path: Path) -> None:
    """Token requests for many agents check one certificate file at once: that is not a stuck mount."""
    key = str(tmp_path / "blueprint.pfx")
    release = threading.Event()
    calls: list[int] = []

    def slow_read() -> bytes:
        calls.append(1)
        release.wait(5)
        return b"certificate"

    results: list[object] = []

    def caller() -> None:
        try:
            results.append(fileio._bounded(key, slow_read, 10, "read"))
        except OSError as exc:
            results.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the other callers arrive while the first access is in flight
    release.set()
    for t in threads:
        t.join(10)
    assert results == [b"certificate"] * 8
    assert len(calls) == 1  # one access for all of them
    # A stat and a read of the same path are different accesses (never each other's result).
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert fileio.stat_file(str(path)).st_size == 3 and fileio.read_file(str(path)) == b"abc"


def test_run_off_loop_uses_a_daemon_thread_not_the_default_executor() -> None:
    seen: list[bool] = []

    def where() -> int:
        seen.append(threading.current_thread().daemon)
        return 7

    assert asyncio.run(run_off_loop(where)) == 7
    assert seen == [True]
