"""Command line: ``agent-token-broker {serve,dev,emulator,check-config}``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _emulator(argv: Sequence[str]) -> int:
    from entra_emulator.cli import main as emulator_main

    return emulator_main(argv)


def _serve(argv: Sequence[str]) -> int:
    from agent_token_broker.app_cli import serve_main

    return serve_main(argv)


def _dev(argv: Sequence[str]) -> int:
    from agent_token_broker.app_cli import dev_main

    return dev_main(argv)


def _check_config(argv: Sequence[str]) -> int:
    from agent_token_broker.app_cli import check_config_main

    return check_config_main(argv)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "serve": (_serve, "run the broker"),
    "dev": (_dev, "run the broker wired to the embedded Entra emulator (demo tenant)"),
    "emulator": (_emulator, "run only the local Entra Agent ID emulator"),
    "check-config": (_check_config, "validate the configuration and print it with secrets redacted"),
}


def usage() -> str:
    lines = ["usage: agent-token-broker COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'agent-token-broker COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"agent-token-broker: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return command[0](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
