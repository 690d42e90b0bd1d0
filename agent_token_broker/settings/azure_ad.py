"""The ``AzureAd`` section and its ``ClientCredentials`` array."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from agent_token_broker.settings.model import (
    DEFAULT_INSTANCE,
    DEFAULT_SIGNED_ASSERTION_FILE,
    DEFAULT_TOKEN_EXCHANGE_URL,
    SOURCE_CLIENT_SECRET,
    SOURCE_PATH,
    SOURCE_SIGNED_ASSERTION_FILE,
    SOURCE_TYPES,
    AzureAdConfig,
    CredentialConfig,
    Secret,
)
from agent_token_broker.settings.reader import Section, indexed_children, is_guid

UNSUPPORTED_SOURCE_TYPES = (
    "KeyVault",
    "StoreWithThumbprint",
    "StoreWithDistinguishedName",
    "Base64Encoded",
    "SignedAssertionFromVault",
    "CustomSignedAssertion",
)
_MULTI_TENANT = {"common", "organizations", "consumers"}
_TENANT_NAME_RE = re.compile(r"^(?=.{4,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$")
# Keys of Microsoft.Identity.Web options that a copied configuration may carry; they do nothing here.
_IGNORED_AZURE_AD_KEYS = (
    "Domain",
    "EnablePiiLogging",
    "AllowWebApiToBeAuthorizedByACL",
    "CallbackPath",
    "SignedOutCallbackPath",
    "TokenDecryptionCredentials",
    "ClientCapabilities",
)
# Keys that belong to credential types this broker does not load.
_FOREIGN_CREDENTIAL_KEYS = (
    "KeyVaultUrl",
    "KeyVaultCertificateName",
    "CertificateStorePath",
    "CertificateThumbprint",
    "CertificateDistinguishedName",
    "Base64EncodedValue",
)


def read_azure_ad(section: Section, env: Mapping[str, str]) -> AzureAdConfig | None:
    """Read and validate ``AzureAd``; returns None when a required value is missing or invalid."""
    problems = section.problems
    before = len(problems.errors)
    instance = section.get_str("Instance", DEFAULT_INSTANCE) or DEFAULT_INSTANCE
    _check_instance(section, instance)
    tenant_id = section.required("TenantId")
    if tenant_id is not None:
        _check_tenant(section, tenant_id)
    client_id = section.required("ClientId")
    if client_id is not None and not is_guid(client_id):
        problems.error(
            section.key("ClientId"), f"must be a GUID (the blueprint application id), got {client_id!r}"
        )
    audiences = list(section.get_list("Audiences") or ())
    single = section.get_str("Audience")
    if single:
        audiences.insert(0, single)
    scopes = section.get_list("Scopes") or ()
    send_x5c = section.get_bool("SendX5C", False)
    credentials = _read_credentials(section, env, send_x5c)
    section.check_unknown(ignored=_IGNORED_AZURE_AD_KEYS, ignored_reason="ignored by this broker")
    if len(problems.errors) > before or tenant_id is None or client_id is None:
        return None
    return AzureAdConfig(
        tenant_id=tenant_id,
        client_id=client_id.lower(),
        instance=instance,
        audiences=tuple(dict.fromkeys(audiences)),
        scopes=scopes,
        credentials=tuple(credentials),
    )


def _check_instance(section: Section, instance: str) -> None:
    parts = urlsplit(instance)
    key = section.key("Instance")
    if parts.scheme.lower() != "https":
        section.problems.error(key, f"must be an https URL, got {instance!r}")
    elif not parts.hostname:
        section.problems.error(key, f"must include a host, got {instance!r}")
    elif parts.username or parts.password:
        section.problems.error(key, "must not contain user information")
    elif parts.query or parts.fragment:
        section.problems.error(key, "must not contain a query or fragment")


def _check_tenant(section: Section, tenant_id: str) -> None:
    key = section.key("TenantId")
    if tenant_id.lower() in _MULTI_TENANT:
        section.problems.error(
            key, f"{tenant_id!r} is not supported by Agent ID; use the tenant's GUID or domain name"
        )
    elif not (is_guid(tenant_id) or _TENANT_NAME_RE.match(tenant_id)):
        section.problems.error(
            key, f"must be a GUID or a domain name such as contoso.onmicrosoft.com, got {tenant_id!r}"
        )


def _read_credentials(section: Section, env: Mapping[str, str], send_x5c: bool) -> list[CredentialConfig]:
    creds_section = section.sub("ClientCredentials")
    result: list[CredentialConfig] = []
    if creds_section.node is not None:
        if creds_section.node.value and not creds_section.node.children:
            section.problems.error(creds_section.path, "must be an array of credential descriptions")
        for index, node in indexed_children(creds_section.node, creds_section.path, section.problems):
            entry = Section(node, node.path, section.problems)
            credential = _read_credential(entry, index, env, send_x5c)
            if credential is not None:
                result.append(credential)
    legacy_secret = section.get_str("ClientSecret")
    if legacy_secret is not None:
        index = result[-1].index + 1 if result else 0
        result.append(CredentialConfig(index, SOURCE_CLIENT_SECRET, client_secret=Secret(legacy_secret)))
    if not result and creds_section.node is None:
        section.problems.error(
            creds_section.path, "at least one credential is required (e.g. ClientCredentials__0__SourceType)"
        )
    return result


def _read_credential(
    entry: Section, index: int, env: Mapping[str, str], send_x5c_default: bool
) -> CredentialConfig | None:
    problems = entry.problems
    before = len(problems.errors)
    given = entry.required("SourceType")
    source_type = None
    if given is not None:
        source_type = next((s for s in SOURCE_TYPES if s.lower() == given.lower()), None)
        unsupported = next((s for s in UNSUPPORTED_SOURCE_TYPES if s.lower() == given.lower()), None)
        if unsupported:
            problems.error(
                entry.key("SourceType"),
                f"{unsupported} is not supported by this broker; use Path (a mounted PEM or PFX file), "
                "SignedAssertionFilePath or SignedAssertionFromManagedIdentity",
            )
        elif source_type is None:
            problems.error(
                entry.key("SourceType"),
                f"unknown source type {given!r}; expected one of " + ", ".join(SOURCE_TYPES),
            )
    secret = entry.get_str("ClientSecret")
    cert_path = entry.get_str("CertificateDiskPath")
    password = entry.raw("CertificatePassword")
    key_path = entry.get_str("PrivateKeyDiskPath")
    assertion_path = entry.get_str("SignedAssertionFileDiskPath") or entry.get_str("SignedAssertionFilePath")
    mi_client_id = entry.get_str("ManagedIdentityClientId")
    exchange = entry.get_str("TokenExchangeUrl", DEFAULT_TOKEN_EXCHANGE_URL) or DEFAULT_TOKEN_EXCHANGE_URL
    send_x5c = entry.get_bool("SendX5C", send_x5c_default)
    if source_type == SOURCE_CLIENT_SECRET and secret is None:
        problems.error(entry.key("ClientSecret"), "required when SourceType is ClientSecret")
    if source_type == SOURCE_PATH and cert_path is None:
        problems.error(entry.key("CertificateDiskPath"), "required when SourceType is Path")
    if source_type == SOURCE_SIGNED_ASSERTION_FILE and assertion_path is None:
        assertion_path = env.get("AZURE_FEDERATED_TOKEN_FILE") or DEFAULT_SIGNED_ASSERTION_FILE
    if mi_client_id is not None and not is_guid(mi_client_id):
        problems.error(entry.key("ManagedIdentityClientId"), f"must be a GUID, got {mi_client_id!r}")
    entry.check_unknown(
        ignored=_FOREIGN_CREDENTIAL_KEYS,
        ignored_reason="ignored (belongs to a credential type this broker does not load)",
    )
    if source_type is None or len(problems.errors) > before:
        return None
    return CredentialConfig(
        index=index,
        source_type=source_type,
        client_secret=Secret(secret) if secret is not None else None,
        certificate_disk_path=cert_path,
        certificate_password=Secret(password) if password else None,
        signed_assertion_file_disk_path=assertion_path,
        managed_identity_client_id=mi_client_id.lower() if mi_client_id else None,
        private_key_disk_path=key_path,
        send_x5c=send_x5c,
        token_exchange_url=exchange,
    )
