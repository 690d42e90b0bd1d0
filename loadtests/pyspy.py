"""py-spy on a running process: record until stopped, then the top frames of the collapsed stacks.

``py-spy`` samples from outside (no instrumentation, so the shares are the real ones); it is not
a test dependency (``pip install py-spy``). Every sampled thread counts (the event loop and the
MSAL worker threads alike): a frame's share is its share of the process's CPU samples.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from loadtests import procs


def binary() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # installed in this venv
    found = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if found is None:
        raise SystemExit("py-spy not found (pip install py-spy)")
    return found


def record(pid: int, out: Path, *, rate: int = 200, max_seconds: int = 3600, gil: bool = True) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` into ``out`` (raw collapsed stacks); stop it with :func:`stop`."""
    return subprocess.Popen(
        [binary(), "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(max_seconds),
         "--format", "raw", "--nolineno", "--output", str(out), *(["--gil"] if gil else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def stop(spy: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Stop sampling (SIGINT: py-spy writes what it has) and wait for the file."""
    procs.stop_process(spy, timeout, signal.SIGINT)


def collapsed_top(path: Path, top: int = 30, *, prefix_filter: str | None = None) -> str:
    """Top frames of a py-spy raw (collapsed stacks) file: by own samples and by total samples.

    ``prefix_filter``: only stacks containing this text (e.g. a thread name) are counted.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or (prefix_filter is not None and prefix_filter not in stack):
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return "no samples"
    out = [f"{samples} samples", "", "own %  total %  frame"]
    for frame, n in own.most_common(top):
        out.append(f"{100 * n / samples:5.1f}  {100 * total[frame] / samples:7.1f}  {frame}")
    out += ["", "by total time:", "total %  own %  frame"]
    for frame, n in total.most_common(top):
        out.append(f"{100 * n / samples:7.1f}  {100 * own[frame] / samples:5.1f}  {frame}")
    return "\n".join(out)
