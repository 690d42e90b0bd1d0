"""Command line: ``agent-token-broker {serve,check-config,healthcheck,dev,emulator}`` and ``--version``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

from agent_token_broker import __version__

# The Entra emulator (package ``entra_emulator``) is a developer tool: production images leave it
# out, and the commands that need it say so in one line instead of failing with a traceback.
EMULATOR_PACKAGE = "entra_emulator"


def emulator_installed() -> bool:
    try:
        return importlib.util.find_spec(EMULATOR_PACKAGE) is not None
    except (ImportError, ValueError):  # a broken or None entry in sys.modules
        return False


def _not_installed(command: str) -> int:
    print(
        f"agent-token-broker: the {command!r} command is not installed in this image: it needs the Entra "
        f"emulator ({EMULATOR_PACKAGE}), which production builds leave out; install from a source checkout "
        "(pip install -e .) or build the Dockerfile's 'dev' target",
        file=sys.stderr,
    )
    return 2


# name: (the entry point "module:function", imported only when the command runs; one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("agent_token_broker.app_cli:serve_main", "run the broker"),
    "check-config": (
        "agent_token_broker.app_cli:check_config_main",
        "validate the configuration and print it with secrets redacted",
    ),
    "healthcheck": (
        "agent_token_broker.healthcheck:healthcheck_main",
        "exit 0 if the running broker's ops listener answers /healthz, else 1",
    ),
    "dev": (
        "agent_token_broker.app_cli:dev_main",
        "run the broker wired to the embedded Entra emulator (demo tenant)",
    ),
    "emulator": (f"{EMULATOR_PACKAGE}.cli:main", "run only the local Entra Agent ID emulator"),
}
DEVELOPER_COMMANDS = ("dev", "emulator")


def _run(command: str, argv: Sequence[str]) -> int:
    if command in DEVELOPER_COMMANDS and not emulator_installed():
        return _not_installed(command)
    module, _, function = COMMANDS[command][0].partition(":")
    entry: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module), function)
    return entry(argv)


def usage() -> str:
    lines = [
        "usage: agent-token-broker COMMAND [options]",
        "       agent-token-broker --version",
        "",
        "commands:",
    ]
    for name, (_, text) in COMMANDS.items():
        if name in DEVELOPER_COMMANDS and not emulator_installed():
            text = "(not installed here: the Entra emulator is left out of production builds)"
        lines.append(f"  {name:<13} {text}")
    lines += ["", "Run 'agent-token-broker COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version", "version"):
        print(f"agent-token-broker {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"agent-token-broker: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return _run(args[0], args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
