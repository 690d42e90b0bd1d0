"""File reads that cannot hang the broker.

A credential or trust file can sit on a stuck network mount (every ``stat``/``read``
blocks) or be a FIFO (``open`` blocks until a writer appears). Done in a worker of a
``ThreadPoolExecutor`` or on the event loop, that blocks shutdown forever: the
interpreter joins executor threads at exit, and SIGTERM never completes.

Here every such call runs in a *daemon* thread and the caller waits at most
``timeout`` seconds; a call that does not return in time raises :class:`FileTimeout`
and its thread is abandoned (daemon threads do not delay exit). Concurrent calls on a
path share the access in flight; once an access has outlived a caller's timeout, further
calls on that path fail at once instead of piling up threads. Files are opened non-blocking and must be regular files, so a FIFO or a
device is refused immediately rather than waited on.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class _Call(Generic[T]):
    """One access in flight; concurrent callers of the same access wait for it (single-flight)."""

    done: threading.Event = field(default_factory=threading.Event)
    outcome: _Outcome[T] = field(default_factory=_Outcome)


_inflight: dict[tuple[str, str], _Call[object]] = {}


def _bounded(key: str, fn: Callable[[], T], timeout: float, kind: str = "") -> T:
    """Run ``fn`` in a daemon thread; wait at most ``timeout`` seconds (synchronous callers).

    Concurrent calls of the same ``kind`` on ``key`` share one access (a dozen token requests
    checking one certificate file at once are not a stuck mount); only an access that outlived
    a caller's ``timeout`` marks ``key`` stuck, and then further calls fail at once.
    """
    with _stuck_lock:
        if key in _stuck:
            raise FileTimeout(f"{key}: an earlier access has not returned yet (stuck mount?)")
        call = _inflight.get((kind, key))
        start = call is None
        if call is None:
            call = _inflight[(kind, key)] = _Call()

    if start:
        def run() -> None:
            try:
                call.outcome.value = fn()
            except BaseException as exc:  # handed to the callers
                call.outcome.error = exc
            finally:
                with _stuck_lock:
                    _stuck.discard(key)
                    if _inflight.get((kind, key)) is call:
                        del _inflight[(kind, key)]
                call.done.set()

        threading.Thread(target=run, name="file-io", daemon=True).start()
    if not call.done.wait(timeout):
        with _stuck_lock:
            if not call.done.is_set():
                _stuck.add(key)
        raise FileTimeout(f"{key}: no answer within {timeout:g} s (stuck mount or blocked file?)")
    if call.outcome.error is not None:
        raise call.outcome.error
    return call.outcome.value  # type: ignore[return-value]


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
    return _bounded(path, lambda: _read_regular(path, max_bytes), timeout, f"read:{max_bytes}")


def stat_file(path: str, *, timeout: float = FILE_TIMEOUT_SECONDS) -> os.stat_result:
    """``os.stat(path)`` (following symlinks) in a daemon thread within ``timeout``."""
    return _bounded(path, lambda: os.stat(path), timeout, "stat")


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
