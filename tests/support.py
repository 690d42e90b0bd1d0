"""Helpers shared by tests: free loopback ports, required system binaries, the broker's logs,
the processes a test starts (wait until ready, read their output, stop them)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Self, TypeVar

import pytest
import requests

from agent_token_broker.logs import setup_logging


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


T = TypeVar("T")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0, signum: int = signal.SIGTERM) -> bool:
    """Stop a process the test started: ``signum`` (SIGTERM), then wait up to ``timeout`` s.
    One that outlives it is killed. True when it exited by itself."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return False


def wait_until(
    check: Callable[[], T | None], proc: subprocess.Popen[Any], seconds: float, output: Callable[[], str] = str
) -> T:
    """Poll ``check()`` every 0.1 s until it returns something truthy, and return that. Fails
    with the process's ``output()`` when the process exits first or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        assert proc.poll() is None, f"exited with {proc.returncode} before it was ready:\n{output()}"
        assert time.monotonic() < deadline, f"not ready in {seconds:g} s:\n{output()}"
        time.sleep(0.1)


def answers_200(url: str) -> bool:
    """True when GET ``url`` answers 200 (no answer yet, e.g. not listening, is False)."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


class OutputLines:
    """The lines a process writes to a pipe, read as they come by a daemon thread (a pipe
    nobody reads fills up and blocks the writer)."""

    def __init__(self, stream: IO[str] | None) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def through(self, marker: str) -> str | None:
        """The text up to the first line holding ``marker``; ``None`` before that line came."""
        lines = list(self.lines)
        end = next((i for i, line in enumerate(lines) if marker in line), None)
        return None if end is None else "\n".join(lines[: end + 1])

    def join(self, timeout: float = 10.0) -> str:
        """Wait for the end of the stream (the process has exited); all the text."""
        self._thread.join(timeout)
        return self.text()


class Captured:
    """What the broker logged: its JSON lines, and every record raw."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.raw: list[str] = []

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]


class _Raw(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        # The unformatted message and every attribute: what a careless handler could write.
        self.out.append(record.getMessage() + " " + repr(record.__dict__))


@contextlib.contextmanager
def broker_logs() -> Iterator[Captured]:
    """The broker's own logging setup at DEBUG, writing to a buffer (plus a raw capture);
    the root logger is restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    saved_levels = {n: logging.getLogger(n).level for n in ("msal", "urllib3", "aiohttp.access")}
    captured = Captured()
    setup_logging("Debug", stream=captured.stream)
    root.addHandler(_Raw(captured.raw))
    try:
        yield captured
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


class LocalHttpServer(ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 (a free port), for tests that need a peer speaking HTTP."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[Self]:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.shutdown()
            self.server_close()
            thread.join(timeout=5)


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers JSON."""

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def send_json(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
