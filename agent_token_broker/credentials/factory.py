"""``build_sources``: one :class:`CredentialSource` per configured credential, in index order."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import requests

from agent_token_broker.credentials.assertion_file import SignedAssertionFileSource
from agent_token_broker.credentials.base import CredentialError, CredentialSource
from agent_token_broker.credentials.certificate import CertificateSource
from agent_token_broker.credentials.client_secret import ClientSecretSource
from agent_token_broker.credentials.managed_identity import DEFAULT_TIMEOUT, ManagedIdentitySource
from agent_token_broker.settings import DEFAULT_SIGNED_ASSERTION_FILE, AzureAdConfig


def build_sources(
    azure_ad: AzureAdConfig,
    *,
    http_session: requests.Session | None = None,
    env: Mapping[str, str] | None = None,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
) -> list[CredentialSource]:
    """Build the blueprint's credential sources (no I/O happens here).

    :param azure_ad: the validated ``AzureAd`` section.
    :param http_session: shared session for managed-identity calls (one is created if None).
    :param env: used for ``AZURE_FEDERATED_TOKEN_FILE`` when a signed-assertion path is unset.
    :param timeout: ``(connect, read)`` seconds for managed-identity HTTP calls.
    """
    environ = env or {}
    sources: list[CredentialSource] = []
    for cred in sorted(azure_ad.credentials, key=lambda c: c.index):
        if cred.source_type == "ClientSecret":
            sources.append(ClientSecretSource(cred.index, cred.client_secret))
        elif cred.source_type == "Path":
            if not cred.certificate_disk_path:
                raise ValueError(f"credential #{cred.index}: CertificateDiskPath is required")
            sources.append(
                CertificateSource(
                    cred.index,
                    cred.certificate_disk_path,
                    client_id=azure_ad.client_id,
                    password=cred.certificate_password,
                    key_path=cred.private_key_disk_path,
                    send_x5c=cred.send_x5c,
                    default_audience=azure_ad.authority + "/oauth2/v2.0/token",
                )
            )
        elif cred.source_type == "SignedAssertionFilePath":
            path = (
                cred.signed_assertion_file_disk_path
                or environ.get("AZURE_FEDERATED_TOKEN_FILE")
                or DEFAULT_SIGNED_ASSERTION_FILE
            )
            sources.append(SignedAssertionFileSource(cred.index, path))
        elif cred.source_type == "SignedAssertionFromManagedIdentity":
            sources.append(
                ManagedIdentitySource(
                    cred.index,
                    client_id=cred.managed_identity_client_id,
                    resource=cred.token_exchange_url,
                    http_session=http_session,
                    timeout=timeout,
                )
            )
        else:
            raise ValueError(f"credential #{cred.index}: unsupported SourceType {cred.source_type!r}")
    return sources


def check_credentials(azure_ad: AzureAdConfig, env: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Open every file-based credential now: ``(problems, warnings)``, one line each naming the key.

    For ``serve``, ``dev`` and ``check-config``: a certificate that cannot be used is a problem;
    a signed-assertion file not there yet is a warning (the broker retries it).
    """
    files = tuple(c for c in azure_ad.credentials if c.source_type in ("Path", "SignedAssertionFilePath"))
    problems: list[str] = []
    warnings: list[str] = []
    for source in build_sources(dataclasses.replace(azure_ad, credentials=files), env=env):
        prefix = f"AzureAd__ClientCredentials__{source.index}__"
        try:
            warning = source.preflight()
        except CredentialError as exc:
            problems.append(f"{prefix}{exc.key or source.key}: {exc}")
        else:
            warnings += [f"{prefix}{source.key}: {warning}"] if warning else []
    return problems, warnings
