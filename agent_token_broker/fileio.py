"""File reads that cannot hang the broker.

A credential or trust file can sit on a stuck network mount (every ``stat``/``read``
blocks) or be a FIFO (``open`` blocks until a writer appears). Done in a worker of a
``ThreadPoolExecutor`` or on the event loop, that blocks shutdown forever: the
interpreter joins executor threads at exit, and SIGTERM never completes.

Here every such call runs in a *daemon* thread and the caller waits at most
``timeout`` seconds; a call that does not return in time raises :class:`FileTimeout`
and its thread is abandoned (daemon threads do not delay exit). While one call on a
path is still stuck, further calls on that path fail at once instead of piling up
threads. Files are opened non-blocking and must be regular files, so a FIFO or a
device is refused immediately rather than waited on.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

FILE_TIMEOUT_SECONDS = 5.0
MAX_FILE_BYTES = 4 * 1024 * 1024

_stuck: set[str] = set()
_stuck_lock = threading.Lock()


class FileTimeout(OSError):
    """A file operation did not finish in time (stuck mount?). The message names the path."""


class NotRegularFile(OSError):
    """The path is a FIFO, socket or device, not a regular file."""


@dataclass
class _Outcome(Generic[T]):
    value: T | None = None
    error: BaseException | None = None


def _bounded(key: str, fn: Callable[[], T], timeout: float) -> T:
    """Run ``fn`` in a daemon thread; wait at most ``timeout`` seconds (synchronous callers)."""
    with _stuck_lock:
        if key in _stuck:
            raise FileTimeout(f"{key}: an earlier access has not returned yet (stuck mount?)")
        _stuck.add(key)
    done = threading.Event()
    outcome: _Outcome[T] = _Outcome()

    def run() -> None:
        try:
            outcome.value = fn()
        except BaseException as exc:  # handed to the caller
            outcome.error = exc
        finally:
            with _stuck_lock:
                _stuck.discard(key)
            done.set()

    threading.Thread(target=run, name="file-io", daemon=True).start()
    if not done.wait(timeout):
        raise FileTimeout(f"{key}: no answer within {timeout:g} s (stuck mount or blocked file?)")
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]


def _read_regular(path: str, max_bytes: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{path}: not a regular file (a FIFO, socket or device?)")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > max_bytes:
                raise OSError(f"{path}: larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_file(path: str, *, timeout: float = FILE_TIMEOUT_SECONDS, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, read in a daemon thread within ``timeout``.

    :raises FileNotFoundError: missing. :raises NotRegularFile: FIFO/socket/device.
    :raises FileTimeout: no answer in time. :raises OSError: anything else.
    """
    return _bounded(path, lambda: _read_regular(path, max_bytes), timeout)


def stat_file(path: str, *, timeout: float = FILE_TIMEOUT_SECONDS) -> os.stat_result:
    """``os.stat(path)`` (following symlinks) in a daemon thread within ``timeout``."""
    return _bounded(path, lambda: os.stat(path), timeout)


async def run_off_loop(fn: Callable[[], T]) -> T:
    """Await ``fn()`` run in a daemon thread (not the default executor: ``asyncio.run`` joins that
    one at exit, forever). ``fn`` must bound its own time (e.g. use :func:`read_file`)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(outcome: _Outcome[T]) -> None:
        if future.done():
            return
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)  # type: ignore[arg-type]

    def run() -> None:
        outcome: _Outcome[T] = _Outcome()
        try:
            outcome.value = fn()
        except BaseException as exc:
            outcome.error = exc
        try:
            loop.call_soon_threadsafe(deliver, outcome)
        except RuntimeError:  # the loop closed meanwhile
            pass

    threading.Thread(target=run, name="file-io-async", daemon=True).start()
    return await future
