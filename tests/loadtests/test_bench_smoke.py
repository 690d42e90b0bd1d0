"""Smoke run of the benchmark harness (``python -m loadtests.bench --smoke``): it works and writes results.

No speed thresholds. Needs wrk, nginx and h2load (Debian packages wrk, nginx, nghttp2-client):
FAILS when they are missing and running as root (CI installs them), skips loudly otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _have(binary: str) -> bool:
    return bool(shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists())


def _require_tools() -> None:
    packages = {"wrk": "wrk", "nginx": "nginx", "h2load": "nghttp2-client"}
    missing = [b for b in packages if not _have(b)]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: apt-get install -y {' '.join(packages[b] for b in missing)}"
    if os.geteuid() == 0:
        pytest.fail(message + " (running as root, as CI does: these must be installed)")
    pytest.skip("LOAD TEST SMOKE SKIPPED: " + message)


def test_locustfile_imports_without_side_effects() -> None:
    done = subprocess.run([sys.executable, "-c", "import loadtests.locustfile as m; print(m.DEMO_AGENTS)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("a1a1a1a1")


def test_bench_smoke_writes_results(tmp_path: Path) -> None:
    _require_tools()
    done = subprocess.run([sys.executable, "-m", "loadtests.bench", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = {p.name: p for p in tmp_path.iterdir()}
    summaries = [n for n in files if n.endswith("-summary.md")]
    assert len(summaries) == 1, sorted(files)
    text = files[summaries[0]].read_text()
    assert "nproc" in text and "## hot" in text
    by_scenario = {json.loads(p.read_text())["scenario"]: json.loads(p.read_text())
                   for n, p in files.items() if n.endswith(".json")}
    assert set(by_scenario) == {"hot", "mixed", "stampede", "outage"}
    for result in by_scenario.values():
        assert "error" not in result, result.get("error")
        assert result["machine"]["nproc"] >= 1
    hot = by_scenario["hot"]
    targets = {row["target"] for row in hot["table"]}
    assert {"aiohttp", "aiohttp web.Server", "nginx", "broker"} <= targets
    assert any(t.startswith("broker at 2000 req/s") for t in targets), targets  # the paced (h2load) run
    assert all(row["req/s median"] > 0 for row in hot["table"])
    assert hot["ratios"]["broker_vs_aiohttp"]["n"] == 1
    assert hot["msal_in_process"]["us_per_call_median"] > 0
    stampede = by_scenario["stampede"]
    assert stampede["stampede"]["ok"] == stampede["stampede"]["clients"]
    assert stampede["upstream_by_leg"], "the emulator log shows the upstream legs"
    assert by_scenario["outage"]["wrk"]["requests"] > 0


def test_scale_scenarios_smoke(tmp_path: Path) -> None:
    """The warm (identities, memory breakdown) and soak scenarios run and write their figures."""
    _require_tools()
    done = subprocess.run([sys.executable, "-m", "loadtests.bench", "--smoke", "--scenario", "warm", "--scenario", "soak",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {json.loads(p.read_text())["scenario"]: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(results) == {"warm", "soak"}
    warm = results["warm"]
    assert "error" not in warm, warm.get("error")
    assert warm["table"][0]["identities"] == 20 and warm["table"][0]["upstream t1"] == 20
    structures = {row["structure"]: row for row in warm["extra_tables"]["memory per structure (Python objects)"]}
    assert structures["cache entries (KeyEntry, Failure)"]["objects"] >= 40  # the probe walked the real cache
    assert structures["remembered targets (gate, per raw query)"]["objects"] != "n/a"  # the probe found them
    soak = results["soak"]
    assert "error" not in soak, soak.get("error")
    assert soak["samples"] and {"tasks", "threads", "rss_kib", "fds"} <= set(soak["samples"][0])
