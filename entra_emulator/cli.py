"""``agent-token-broker emulator`` / ``python -m entra_emulator``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from entra_emulator.banner import banner
from entra_emulator.server import AsyncEmulator
from entra_emulator.store import StateError
from entra_emulator.tenant import load_spec


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-token-broker emulator",
                                description="Run the local Microsoft Entra Agent ID emulator.")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port (0 = any free port; default 8443)")
    p.add_argument("--mi-port", type=int, default=8480, help="plain-HTTP managed-identity port (default 8480)")
    p.add_argument("--state-dir", type=Path, default=Path("state/emulator"),
                   help="where the CA, certificates and keys are kept between runs (default state/emulator)")
    p.add_argument("--reset", action="store_true",
                   help="regenerate the CA, certificates, signing keys and MI secret in --state-dir")
    p.add_argument("--tenant-file", type=Path, default=None, help="JSON tenant spec (default: the demo tenant)")
    p.add_argument("--mi-secret", default=None, help="X-IDENTITY-HEADER secret (default: the one in --state-dir)")
    return p


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run with uvloop when available (its TLS is cheaper per request than asyncio's)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
        return
    uvloop.run(main)


async def _serve(args: argparse.Namespace) -> None:
    spec = load_spec(args.tenant_file) if args.tenant_file else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the banner: a client may stop us right after it
        loop.add_signal_handler(sig, stop.set)
    emu = AsyncEmulator(args.state_dir, args.port, args.mi_port, args.mi_secret, spec, reset_state=args.reset)
    await emu.start()
    print(banner(emu.state), flush=True)
    try:
        await stop.wait()
    finally:
        await emu.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        _run(_serve(args))
    except (OSError, ValueError, StateError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 1
    return 0
