"""``python -m agent_token_broker``: the same command line as the ``agent-token-broker`` script."""

from agent_token_broker.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
