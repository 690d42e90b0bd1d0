"""Machine info, statistics helpers, and writing ``results/<date>-<scenario>.json`` plus a Markdown summary."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine_info() -> dict[str, Any]:
    import aiohttp
    import msal
    import uvloop

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
        "python": platform.python_version(), "aiohttp": aiohttp.__version__, "uvloop": uvloop.__version__,
        "msal": msal.__version__, "wrk": _version(["wrk", "-v"]), "nginx": _version(["nginx", "-v"]),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a series (the spread over interleaved rounds)."""
    if not values:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "n": 0}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def goal(name: str, target: str, measured: Any, met: bool | None, floor: str = "",
         above_floor: bool | None = None) -> dict[str, Any]:
    """One goal's line: its target, what was measured, whether it was met (and the floor, if it has one)."""
    return {"goal": name, "target": target, "measured": measured, "met": met, "floor": floor,
            "above_floor": above_floor}


def write_results(out: Path, stamp: str, results: list[dict[str, Any]], machine: dict[str, Any],
                  command: str) -> tuple[list[Path], Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for result in results:
        path = out / f"{stamp}-{result['scenario']}.json"
        path.write_text(json.dumps({"machine": machine, "command": command, **result}, indent=2) + "\n")
        files.append(path)
    summary = out / f"{stamp}-summary.md"
    summary.write_text(markdown(results, machine, command))
    return files, summary


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(results: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    lines = [f"# Load test results ({dt.date.today().isoformat()})", "", f"Command: `{command}`", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += ["", "Absolute figures on a shared 2-core machine are noise; read the ratios "
              "(broker vs baselines measured in the same run, interleaved; median [min-max] over rounds).", ""]
    for result in results:
        lines += [f"## {result['scenario']}", "", result.get("description", ""), ""]
        table = result.get("table", [])
        if table:
            headers = list(table[0].keys())
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(_cell(row.get(h, "")) for h in headers) + " |" for row in table]
            lines.append("")
        goals = result.get("goals", [])
        if goals:
            lines += ["| goal | target | measured | met | floor | above floor |", "|---|---|---|---|---|---|"]
            yes_no = {True: "yes", False: "**no**", None: ""}
            for g in goals:
                met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
                lines.append(f"| {g['goal']} | {g['target']} | {_cell(g['measured'])} | {met} | "
                             f"{g.get('floor', '')} | {yes_no[g.get('above_floor')]} |")
            lines.append("")
        for title, rows in result.get("extra_tables", {}).items():
            if rows:
                headers = list(rows[0].keys())
                lines += [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(_cell(row.get(h, "")) for h in headers) + " |" for row in rows]
                lines.append("")
        lines += [f"- {note}" for note in result.get("notes", [])]
        lines.append("")
    return "\n".join(lines)
