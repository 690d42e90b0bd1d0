"""``load_settings``: merge the sources, read every declared key, report all problems at once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_token_broker.settings.model import Settings
from agent_token_broker.settings.schema import ConfigError, Problems, effective, read, unread_keys
from agent_token_broker.settings.tree import KNOWN_SECTIONS, URLS_VARIABLE, build_tree


def load_settings(
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
    config_data: bytes | None = None,
) -> Settings:
    """Load and validate the configuration.

    :param env: environment variables (default ``os.environ``). Only variables whose first
        segment is a known section (``AzureAd``, ``DownstreamApis``, ``Sidecar``, ``Broker``,
        ``Logging``, ``Kestrel``) and ``ASPNETCORE_URLS`` are read; ``AZURE_FEDERATED_TOKEN_FILE``
        is the default path for ``SignedAssertionFilePath`` credentials.
    :param config_file: an ``appsettings.json`` file (lowest precedence after the defaults).
    :param overrides: flat ``Key__Sub=Value`` pairs from the command line (highest precedence).
    :param config_data: the bytes of ``config_file`` when the caller read them (a reload reads
        the file with a bounded, regular-files-only read); by default the file is read here.
    :raises ConfigError: listing every problem found, one line each, naming the key.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    tree = build_tree(environ, config_file, overrides, config_data)
    problems = Problems(environ)
    problems.errors.extend(tree.problems)
    problems.warnings.extend(tree.warnings)
    settings = read(Settings, tree.root, "", problems)
    unread_keys(tree.root, problems)
    if problems.errors or settings is None:
        raise ConfigError(problems.errors or ["configuration: invalid"])
    return dataclasses.replace(settings, warnings=tuple(problems.warnings))


def effective_config(settings: Settings) -> dict[str, Any]:
    """The configuration as a JSON-ready nested dict (ASP.NET key names), secrets as ``<redacted>``."""
    return {**effective(settings), "Warnings": list(settings.warnings)}


__all__ = ["KNOWN_SECTIONS", "URLS_VARIABLE", "effective_config", "load_settings"]
