"""How fast does the emulator issue tokens? (issue 17: warming 100k identities must not wait on it)

Runs the emulator as its own process (``python -m entra_emulator``, a tenant with N agent
identities) and measures, per identity, the two tokens a broker needs to serve an autonomous
agent token: **T1** (blueprint + ``fmi_path``) and the **agent app token** (client assertion = T1):

- ``direct``: an aiohttp client in this process posts the two token requests itself;
- ``broker``: ``agent-token-broker serve`` (MSAL in the loop) warms the N identities through
  ``/AuthorizationHeaderUnauthenticated/graph`` (``--concurrency`` requests in flight).

Reported per mode: tokens/s (wall clock), the emulator's CPU seconds per token (from
``/proc/<pid>/stat``; ``1 / cpu_per_token`` is what one core of emulator can issue), and, in
``broker`` mode, the broker's CPU per token. ``--profile`` runs the emulator under cProfile and
prints its top frames. Results go to ``--out`` (default ``loadtests/results``) as
``<date>-emulator-bench.json`` and ``.md`` with the command line.

    python -m loadtests.emulator_bench                       # 2,000 identities, both modes
    python -m loadtests.emulator_bench --identities 20000 --mode broker --profile
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import pstats
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from entra_emulator import demo
from loadtests import procs, pyspy
from loadtests.context import BENCH_LIMITS
from loadtests.emuproc import Emulator, cpu_seconds

FMI_SCOPE = demo.TOKEN_EXCHANGE_SCOPE
GRAPH_SCOPE = f"{demo.GRAPH_RESOURCE}/.default"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


async def _direct(emu: Emulator, agents: list[str], concurrency: int) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(emu.ca_path))
    token_url = f"{emu.authority}/oauth2/v2.0/token"
    failures: dict[str, int] = {}
    ok = 0
    queue = iter(agents)
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def post(form: dict[str, str]) -> str | None:
            async with http.post(token_url, data=form) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    key = f"{resp.status} {body.get('error_codes')}"
                    failures[key] = failures.get(key, 0) + 1
                    return None
                return str(body["access_token"])

        async def worker() -> None:
            nonlocal ok
            for agent in queue:
                t1 = await post({"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID,
                                 "client_secret": demo.BLUEPRINT_SECRET, "scope": FMI_SCOPE, "fmi_path": agent})
                if t1 is None:
                    continue
                app = await post({"grant_type": "client_credentials", "client_id": agent, "scope": GRAPH_SCOPE,
                                  "client_assertion_type": ASSERTION_TYPE, "client_assertion": t1})
                ok += 2 if app is not None else 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"tokens": ok, "failures": failures}


def run_direct(emu: Emulator, agents: list[str], concurrency: int) -> dict[str, Any]:
    cpu0, t0 = emu.cpu(), time.monotonic()
    result = asyncio.run(_direct(emu, agents, concurrency))
    wall, cpu = time.monotonic() - t0, emu.cpu() - cpu0
    return _figures("direct", result["tokens"], wall, cpu, None) | {"failures": result["failures"]}


def broker_credential(emu: Emulator, kind: str) -> dict[str, str]:
    """The blueprint credential the broker uses: the demo secret, or the emulator's PFX (what
    production looks like: MSAL signs one certificate assertion and reuses it for minutes)."""
    cred = "AzureAd__ClientCredentials__0__"
    if kind == "secret":
        return {cred + "SourceType": "ClientSecret", cred + "ClientSecret": demo.BLUEPRINT_SECRET}
    return {cred + "SourceType": "Path", cred + "CertificateDiskPath": str(emu.state_dir / "blueprint.pfx"),
            cred + "CertificatePassword": demo.PFX_PASSWORD}


def run_broker(emu: Emulator, agents: list[str], concurrency: int, workdir: Path,
               credential: str = "secret", broker_profile: Path | None = None,
               extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    from loadtests import clients

    port, ops = procs.free_port(), procs.free_port()
    env = dict(os.environ)
    env.update({
        "AzureAd__Instance": emu.url + "/",
        "AzureAd__TenantId": demo.TENANT_ID,
        "AzureAd__ClientId": demo.BLUEPRINT_APP_ID,
        **broker_credential(emu, credential),
        "DownstreamApis__graph__Scopes__0": GRAPH_SCOPE,
        "Broker__Listen": f"127.0.0.1:{port}",
        "Broker__OpsListen": f"127.0.0.1:{ops}",
        "Logging__LogLevel__Default": "Warning",
        "REQUESTS_CA_BUNDLE": str(emu.ca_path),
        **BENCH_LIMITS,
        **(extra_env or {}),
    })
    log = open(workdir / "broker.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "agent_token_broker.cli", "serve"], env=env, cwd=procs.ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        procs.wait_http(f"http://127.0.0.1:{ops}/readyz", proc=proc)
        before = emu.token_counts()
        spy = pyspy.record(proc.pid, broker_profile) if broker_profile is not None else None
        cpu0, bcpu0, t0 = emu.cpu(), cpu_seconds(proc.pid), time.monotonic()
        paths = [(f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={a}", {}) for a in agents]
        warmed = clients.warm(f"http://127.0.0.1:{port}", paths, concurrency=concurrency, max_seconds=1800)
        wall, cpu, bcpu = time.monotonic() - t0, emu.cpu() - cpu0, cpu_seconds(proc.pid) - bcpu0
        after = emu.token_counts()
        if spy is not None:
            pyspy.stop(spy)
    finally:
        procs.stop_process(proc)
        log.close()
    issued = {leg: after.get(leg, 0) - before.get(leg, 0) for leg in ("t1", "app")}
    out = _figures("broker", issued["t1"] + issued["app"], wall, cpu, bcpu)
    return out | {"credential": credential,"identities_ok": warmed.ok, "identities_failed": warmed.failed,
                  "statuses": {str(k): v for k, v in warmed.statuses.items()}, "upstream": issued}


def _figures(mode: str, tokens: int, wall: float, cpu: float, broker_cpu: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mode": mode, "tokens": tokens, "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1) if wall else 0.0,
        "emulator_cpu_s": round(cpu, 2),
        "emulator_cpu_ms_per_token": round(1000 * cpu / tokens, 3) if tokens else None,
        "emulator_tokens_per_cpu_s": round(tokens / cpu, 1) if cpu else None,
    }
    if broker_cpu is not None:
        out["broker_cpu_s"] = round(broker_cpu, 2)
        out["broker_cpu_ms_per_identity"] = round(2000 * broker_cpu / tokens, 3) if tokens else None
        if tokens:  # 100k identities = 200k tokens, on the CPU both processes used per token here
            per_token = (cpu + broker_cpu) / tokens
            out["projected_100k_identities_cpu_s"] = round(200_000 * per_token, 1)
    return out


def top_frames(profile: Path, n: int = 25) -> str:
    import io

    buf = io.StringIO()
    pstats.Stats(str(profile), stream=buf).sort_stats("tottime").print_stats(n)
    return buf.getvalue()


def write_results(out: Path, command: str, runs: list[dict[str, Any]], profile_text: str | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    name = f"{stamp}-emulator-bench" + (f"-{runs[0]['label']}" if runs and runs[0].get("label") else "")
    meta = {"command": command, "python": platform.python_version(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "load_avg_at_end": os.getloadavg()}
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    lines = [f"# Emulator token-issuing rate ({stamp})", "", f"Command: `{command}`", "",
             f"Python {meta['python']}, {meta['cpus']} CPUs ({meta['machine']}), load average at end "
             f"{', '.join(f'{x:.2f}' for x in meta['load_avg_at_end'])}.", "",
             "| mode | identities | tokens | wall s | tokens/s | emulator CPU ms/token | emulator tokens per CPU-s "
             "| broker CPU ms/identity | projected CPU-s for 100k identities |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        mode = r["mode"] + (f" ({r['credential']})" if "credential" in r else "")
        lines.append(f"| {mode} | {r['identities']} | {r['tokens']} | {r['wall_s']} | {r['tokens_per_s']} | "
                     f"{r['emulator_cpu_ms_per_token']} | {r['emulator_tokens_per_cpu_s']} | "
                     f"{r.get('broker_cpu_ms_per_identity', '-')} | {r.get('projected_100k_identities_cpu_s', '-')} |")
    if profile_text:
        lines += ["", "## Emulator profile (cProfile, by own time)", "", "```", profile_text.strip(), "```"]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.emulator_bench", description=__doc__.split("\n")[0])
    p.add_argument("--identities", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--mode", default="direct,broker", help="comma-separated: direct, broker")
    p.add_argument("--credential", choices=("secret", "certificate"), default="secret",
                   help="the broker's blueprint credential in broker mode (default secret)")
    p.add_argument("--profile", action="store_true", help="run the emulator under cProfile")
    p.add_argument("--profile-file", type=Path, default=None, help="keep the emulator's cProfile stats here")
    p.add_argument("--out", type=Path, default=procs.ROOT / "loadtests" / "results")
    p.add_argument("--emulator-src", type=Path, default=None,
                   help="run the emulator package from this source tree (e.g. `git archive` of a baseline commit)")
    p.add_argument("--broker-profile", type=Path, default=None,
                   help="broker mode: sample the broker with py-spy while it warms; collapsed stacks to this file")
    p.add_argument("--broker-env", action="append", default=[], metavar="KEY=VALUE",
                   help="broker mode: an extra setting for serve (repeatable), e.g. Broker__Upstream__MaxConcurrency=32")
    p.add_argument("--label", default="", help="a name for this run in the results (e.g. before/after)")
    args = p.parse_args(argv)
    command = "python -m loadtests.emulator_bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    unknown = set(modes) - {"direct", "broker"}
    if unknown:
        p.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    agents = procs.agent_ids(args.identities)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="emulator-bench-") as tmp:
        workdir = Path(tmp)
        profile = (args.profile_file or workdir / "emulator.prof") if args.profile else None
        emu = Emulator(workdir, args.identities, profile, args.emulator_src)
        try:
            for mode in modes:  # each mode gets its own identities: no T1 is reused from a previous mode
                half = agents if len(modes) == 1 else agents[modes.index(mode)::len(modes)]
                if mode == "direct":
                    run = run_direct(emu, half, args.concurrency)
                else:
                    extra = dict(kv.split("=", 1) for kv in args.broker_env)
                    run = run_broker(emu, half, args.concurrency, workdir, args.credential,
                                     args.broker_profile, extra)
                run["identities"] = len(half)
                run["label"] = args.label
                runs.append(run)
                print(json.dumps(run), flush=True)
        finally:
            emu.stop()
        profile_text = top_frames(profile) if profile is not None and profile.exists() else None
    if profile_text:
        print(profile_text)
    if args.broker_profile is not None and args.broker_profile.exists():
        print(pyspy.collapsed_top(args.broker_profile))
    print(f"wrote {write_results(args.out, command, runs, profile_text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
