"""``agent-token-broker emulator`` / ``python -m entra_emulator``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from entra_emulator import demo
from entra_emulator.server import AsyncEmulator
from entra_emulator.tenant import load_spec


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-token-broker emulator",
                                description="Run the local Microsoft Entra Agent ID emulator.")
    p.add_argument("--port", type=int, default=8443, help="HTTPS port (0 = any free port; default 8443)")
    p.add_argument("--mi-port", type=int, default=8480, help="plain-HTTP managed-identity port (default 8480)")
    p.add_argument("--state-dir", type=Path, default=Path("state/emulator"), help="where ca.pem etc. are written")
    p.add_argument("--tenant-file", type=Path, default=None, help="JSON tenant spec (default: the demo tenant)")
    p.add_argument("--mi-secret", default=None, help="X-IDENTITY-HEADER secret (default: random)")
    return p


def banner(emu: AsyncEmulator) -> str:
    s = emu.state
    return "\n".join([
        "Entra Agent ID emulator running",
        f"  authority        {s.base_url}/{demo.TENANT_ID}",
        f"  discovery        {s.base_url}/{demo.TENANT_ID}/v2.0/.well-known/openid-configuration",
        f"  admin            {s.base_url}/_emulator/state",
        f"  managed identity {s.mi_url}  (IMDS + App Service /msi/token)",
        f"  CA certificate   {s.tls.ca_path}",
        "",
        "Environment for clients:",
        f"  export REQUESTS_CA_BUNDLE={s.tls.ca_path} SSL_CERT_FILE={s.tls.ca_path}",
        f"  export AzureAd__Instance={s.base_url}/ AzureAd__TenantId={demo.TENANT_ID}",
        f"  export AzureAd__ClientId={demo.BLUEPRINT_APP_ID}",
        f"  export AZURE_POD_IDENTITY_AUTHORITY_HOST={s.mi_url}",
        f"  export IDENTITY_ENDPOINT={s.mi_url}/msi/token IDENTITY_HEADER={s.mi_secret}",
        f"  demo agents: {demo.AGENT_1_ID} {demo.AGENT_2_ID}",
        "Press Ctrl-C to stop.",
    ])


async def _serve(args: argparse.Namespace) -> None:
    spec = load_spec(args.tenant_file) if args.tenant_file else None
    emu = AsyncEmulator(args.state_dir, args.port, args.mi_port, args.mi_secret, spec)
    await emu.start()
    print(banner(emu), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emu.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        asyncio.run(_serve(args))
    except (OSError, ValueError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 1
    return 0
