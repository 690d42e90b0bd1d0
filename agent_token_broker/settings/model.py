"""The configuration model: Microsoft's sidecar schema plus the ``Broker`` section, each key declared once.

A field made with ``setting``/``section`` is a key: its name, default, bounds, parser and doc live
here (and in ``security.py``, ``broker_section.py``) and nowhere else; see ``schema.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agent_token_broker.settings import checks
from agent_token_broker.settings.broker_section import (
    CacheConfig,
    DownstreamCallConfig,
    ManagedIdentityEndpointConfig,
    RedisCacheConfig,
    UpstreamConfig,
)
from agent_token_broker.settings.callers import AuditConfig, TracingConfig
from agent_token_broker.settings.listen import (
    DEFAULT_LISTEN,
    DEFAULT_OPS_LISTEN,
    Listen,
    listen_item,
    ops_listen,
)
from agent_token_broker.settings.schema import CaseInsensitiveMapping, Draft, Secret, declared, setting
from agent_token_broker.settings.security import SecurityConfig
from agent_token_broker.settings.tree import URLS_VARIABLE

DEFAULT_INSTANCE = "https://login.microsoftonline.com/"
DEFAULT_SIGNED_ASSERTION_FILE = "/var/run/secrets/azure/tokens/azure-identity-token"
DEFAULT_TOKEN_EXCHANGE_URL = "api://AzureADTokenExchange"
SOURCE_CLIENT_SECRET, SOURCE_PATH = "ClientSecret", "Path"
SOURCE_SIGNED_ASSERTION_FILE, SOURCE_MANAGED_IDENTITY = "SignedAssertionFilePath", "SignedAssertionFromManagedIdentity"
SOURCE_TYPES = (SOURCE_CLIENT_SECRET, SOURCE_PATH, SOURCE_SIGNED_ASSERTION_FILE, SOURCE_MANAGED_IDENTITY)
UNSUPPORTED_SOURCE_TYPES = ("KeyVault", "StoreWithThumbprint", "StoreWithDistinguishedName", "Base64Encoded", "SignedAssertionFromVault", "CustomSignedAssertion")
OVERRIDE_ROUTES = ("GetAuthorizationHeader", "GetAuthorizationHeaderUnauthenticated", "CallDownstreamApi", "CallDownstreamApiUnauthenticated")
DEFAULT_ALLOW_OVERRIDES: Mapping[str, bool] = MappingProxyType({r: not r.endswith("Unauthenticated") for r in OVERRIDE_ROUTES})
_FOREIGN_KEYS = ("KeyVaultUrl", "KeyVaultCertificateName", "CertificateStorePath", "CertificateThumbprint", "CertificateDistinguishedName", "Base64EncodedValue")
_COPIED_KEYS = ("EnablePiiLogging", "AllowWebApiToBeAuthorizedByACL", "CallbackPath", "SignedOutCallbackPath", "TokenDecryptionCredentials", "ClientCapabilities")
_UNSUPPORTED_OPTIONS = ("PopPublicKey", "PopClaims", "ManagedIdentity", "LongRunningWebApiSessionKey")
_PATH, _MI, _SAF = (SOURCE_PATH,), (SOURCE_MANAGED_IDENTITY,), (SOURCE_SIGNED_ASSERTION_FILE,)


def _source_type(text: str) -> str:
    found = next((s for s in SOURCE_TYPES if s.lower() == text.lower()), None)
    unsupported = next((s for s in UNSUPPORTED_SOURCE_TYPES if s.lower() == text.lower()), None)
    if unsupported is not None:
        raise ValueError(f"{unsupported} is not supported by this broker; use Path (a mounted PEM or PFX file), SignedAssertionFilePath or SignedAssertionFromManagedIdentity")
    if found is None:
        raise ValueError(f"unknown source type {text!r}; expected one of " + ", ".join(SOURCE_TYPES))
    return found


@dataclass(frozen=True)
class CredentialConfig:
    """One ``AzureAd__ClientCredentials__N`` entry; ``sources`` names the SourceTypes that use a key."""

    IGNORED = dict.fromkeys(_FOREIGN_KEYS, "ignored (belongs to a credential type this broker does not load)")
    DERIVED = {"Index": "index"}

    index: int
    source_type: str = setting("SourceType", required=True, parse=_source_type, values_doc=", ".join(f"`{s}`" for s in SOURCE_TYPES), doc="Case-insensitive. " + ", ".join(UNSUPPORTED_SOURCE_TYPES) + " are refused: mount the certificate and use `Path`.")
    client_secret: Secret | None = setting("ClientSecret", None, sources=(SOURCE_CLIENT_SECRET,), default_doc="required", doc="Shared secret. Use it for development only.")
    certificate_disk_path: str | None = setting("CertificateDiskPath", None, sources=_PATH, default_doc="required", values_doc="path", doc="PEM key + certificate(s); PEM certificate(s) with `PrivateKeyDiskPath`; or PFX. Detected from the content, re-read when it changes.")
    certificate_password: Secret | None = setting("CertificatePassword", None, raw=True, parse=lambda text: Secret(text) if text else None, sources=_PATH, doc="Password of an encrypted PEM key or of a PFX file.")
    signed_assertion_file_disk_path: str | None = setting("SignedAssertionFileDiskPath", None, aliases=("SignedAssertionFilePath",), sources=_SAF, values_doc="path", default_doc=f"`$AZURE_FEDERATED_TOKEN_FILE`, else `{DEFAULT_SIGNED_ASSERTION_FILE}`", doc="Federated token file, re-read when it changes (also the kubelet's `..data` symlink swap).")
    managed_identity_client_id: str | None = setting("ManagedIdentityClientId", None, parse=checks.guid(), sources=_MI, values_doc="GUID", doc="Client id of a user-assigned identity; unset for the system-assigned one.")
    private_key_disk_path: str | None = setting("PrivateKeyDiskPath", None, sources=_PATH, values_doc="path", doc="Broker extension: a separate PEM key file (e.g. `tls.key` of a Kubernetes TLS secret).")
    send_x5c: bool = setting("SendX5C", False, default_key="AzureAd__SendX5C", sources=_PATH, doc="`true` adds the certificate chain as `x5c` (subject name/issuer authentication).")
    token_exchange_url: str = setting("TokenExchangeUrl", DEFAULT_TOKEN_EXCHANGE_URL, sources=_MI, doc="Resource of the managed-identity token (`api://AzureADTokenExchangeUSGov`, `...China` in other clouds).")

    @classmethod
    def settle(cls, v: Draft) -> None:
        kind = v.source_type
        if kind == SOURCE_CLIENT_SECRET and v.client_secret is None:
            v.error("client_secret", "required when SourceType is ClientSecret")
        if kind == SOURCE_PATH and v.certificate_disk_path is None:
            v.error("certificate_disk_path", "required when SourceType is Path")
        if kind == SOURCE_SIGNED_ASSERTION_FILE and v.signed_assertion_file_disk_path is None:
            v.set("signed_assertion_file_disk_path", v.env.get("AZURE_FEDERATED_TOKEN_FILE") or DEFAULT_SIGNED_ASSERTION_FILE)
        for name, key, *_ in declared(cls):
            if kind is not None and key.sources and kind not in key.sources and v.given(name):
                v.error(name, f"not used with SourceType {kind} (only with {', '.join(key.sources)}); remove it")


@dataclass(frozen=True)
class AzureAdConfig:
    """The ``AzureAd`` section: authority, blueprint app id, inbound audiences, credentials."""

    IGNORED = dict.fromkeys(_COPIED_KEYS, "ignored by this broker")
    DERIVED = {"Authority": "authority"}

    tenant_id: str = setting("TenantId", required=True, parse=checks.tenant, values_doc="GUID or domain", doc="Tenant GUID or domain (`contoso.onmicrosoft.com`); `common`, `organizations`, `consumers` are refused (not in Agent ID).")
    client_id: str = setting("ClientId", required=True, parse=checks.guid(" (the blueprint application id)"), values_doc="GUID", doc="The agent identity **blueprint** application id.")
    instance: str = setting("Instance", DEFAULT_INSTANCE, parse=checks.authority_host, values_doc="https URL", doc="Authority host (the emulator's https URL in development).")
    audience: str | None = setting("Audience", None, hidden=True, default_doc="`ClientId`, `api://ClientId`", doc="An accepted audience of inbound tokens, before `Audiences`; either replaces the default.")
    audiences: tuple[str, ...] = setting("Audiences", (), default_doc="`ClientId`, `api://ClientId`", doc="Accepted audiences of inbound tokens.")
    scopes: tuple[str, ...] = setting("Scopes", (), live=True, doc="Scopes required by `/Validate` (one of them).")
    domain: str | None = setting("Domain", None, parse=checks.domain, values_doc="domain name", live=True, doc="The tenant's domain name (`contoso.onmicrosoft.com`), as in Microsoft.Identity.Web: a tenant override naming it is a no-op.")
    send_x5c: bool = setting("SendX5C", False, doc="Default `SendX5C` of certificate credentials.")
    credentials: tuple[CredentialConfig, ...] = setting("ClientCredentials", ())
    client_secret: Secret | None = setting("ClientSecret", None, hidden=True, doc="Legacy form: one more `ClientSecret` credential, after the array.")

    def __post_init__(self) -> None:
        if not self.audiences:
            object.__setattr__(self, "audiences", (self.client_id, "api://" + self.client_id))

    @property
    def authority(self) -> str:
        return self.instance.rstrip("/") + "/" + self.tenant_id

    @classmethod
    def settle(cls, v: Draft) -> None:
        v.set("audiences", tuple(dict.fromkeys(([v.audience] if v.audience else []) + list(v.audiences))))
        credentials = list(v.credentials)
        if v.client_secret is not None:
            credentials.append(CredentialConfig(credentials[-1].index + 1 if credentials else 0, SOURCE_CLIENT_SECRET, client_secret=v.client_secret))
            v.set("credentials", tuple(credentials))
        if not credentials and not v.given("credentials"):
            v.error("credentials", "at least one credential is required (e.g. ClientCredentials__0__SourceType)")


@dataclass(frozen=True)
class DownstreamApiConfig:
    """One ``DownstreamApis__<name>`` entry."""

    IGNORED = {"AcquireTokenOptions__CorrelationId": "ignored by this broker"}
    REJECTED = dict.fromkeys((f"AcquireTokenOptions__{k}" for k in _UNSUPPORTED_OPTIONS), "not supported by this broker")

    name: str
    scopes: tuple[str, ...] = setting("Scopes", (), doc="Scopes to request.")
    base_url: str | None = setting("BaseUrl", None, parse=checks.base_url, values_doc="https URL", doc="Where `/DownstreamApi*` calls go; plain `http` only to loopback; no user information or fragment.")
    relative_path: str = setting("RelativePath", "", default_doc='`""`', doc="Path appended to `BaseUrl`.")
    http_method: str = setting("HttpMethod", "GET", parse=checks.http_method, values_doc="HTTP method", doc="Method of downstream calls: " + ", ".join(checks.HTTP_METHODS) + ".")
    request_app_token: bool = setting("RequestAppToken", False, doc="Request an app (or agent) token rather than a user token.")
    accept_header: str | None = setting("AcceptHeader", None, doc="`Accept` header of downstream calls.")
    content_type: str | None = setting("ContentType", None, doc="`Content-Type` header of downstream calls.")
    tenant: str | None = setting("AcquireTokenOptions__Tenant", None, doc="Tenant to acquire the token in.")
    allowed_scopes: tuple[str, ...] | None = setting("AllowedScopes", None, default_doc="any (strict: `Scopes`)", doc="Broker extension: scopes a caller may ask for with `optionsOverride.Scopes` (case-insensitive); others get 403.")
    authentication_scheme: str = setting("AcquireTokenOptions__AuthenticationScheme", "Bearer", parse=checks.bearer_only, values_doc="`Bearer`", doc="Only `Bearer` is supported.")


@dataclass(frozen=True)
class SidecarConfig:
    """The ``Sidecar`` section."""

    IGNORED = {"PopValidation": "ignored (PoP validation is not implemented)"}

    allow_overrides: Mapping[str, bool] = setting("AllowOverrides", DEFAULT_ALLOW_OVERRIDES, doc="Allow `optionsOverride.*` on Microsoft's `{name}` route.")
    allow_outbound_redirects: bool = setting("AllowOutboundRedirects", False, doc="Follow downstream 3xx (at most 5; to another origin without token, caller headers or body, or refused: security.md §7); off, a 3xx is the result, with its `Location`.")


@dataclass(frozen=True)
class KestrelEndpoint:
    name: str
    url: tuple[Listen, ...] = setting("Url", (), parse=listen_item, split=";", values_doc="addresses", doc="API listener(s) when `Broker__Listen` is unset.")


@dataclass(frozen=True)
class KestrelConfig:
    endpoints: Mapping[str, KestrelEndpoint] = setting("Endpoints", CaseInsensitiveMapping())


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration. Build it with :func:`agent_token_broker.settings.load_settings`."""

    OPEN = ("Logging",)  # every other Logging key (e.g. Logging__LogLevel__Microsoft.AspNetCore) is accepted

    azure_ad: AzureAdConfig = setting("AzureAd")
    downstream_apis: Mapping[str, DownstreamApiConfig] = setting("DownstreamApis", CaseInsensitiveMapping(), parse=checks.api_name, live=True)
    sidecar: SidecarConfig = setting("Sidecar", SidecarConfig, live=True)
    listen: tuple[Listen, ...] = setting("Broker__Listen", (DEFAULT_LISTEN,), parse=listen_item, split=";", values_doc="addresses", doc="API listener(s), `;`-separated. Unset: every `Kestrel__Endpoints__<name>__Url`, else `ASPNETCORE_URLS`.")
    ops_listen: Listen | None = setting("Broker__OpsListen", DEFAULT_OPS_LISTEN, parse=ops_listen, raw=True, show=lambda v: str(v) if v else "off", values_doc="address or `off`", doc="Listener for metrics and health; `off` or empty disables it.")
    kestrel: KestrelConfig = setting("Kestrel", KestrelConfig, hidden=True)
    aspnetcore_urls: tuple[Listen, ...] = setting(URLS_VARIABLE, (), parse=listen_item, split=";", hidden=True, values_doc="addresses", doc="API listener(s) when neither `Broker__Listen` nor a Kestrel endpoint is set.")
    strict: bool = setting("Broker__Strict", False, live=True, doc="Stricter behaviour ([security.md](security.md#strict-mode)): 404 for unknown APIs, header required, override scopes only from allow-lists, `AzureAd__Scopes` on `/AuthorizationHeader`.")
    config_watch_seconds: float = setting("Broker__ConfigWatchSeconds", 5.0, low=0, high=3600, live=True, doc="With `--config`: how often the file is checked for a change, which reloads the configuration as `SIGHUP` does ([reload](#reload-without-restart)); `0` turns the check off.")
    security: SecurityConfig = setting("Broker", SecurityConfig, live=True)
    cache: CacheConfig = setting("Broker__Cache", CacheConfig)
    upstream: UpstreamConfig = setting("Broker__Upstream", UpstreamConfig)
    downstream: DownstreamCallConfig = setting("Broker__Downstream", DownstreamCallConfig, live=True)
    managed_identity_endpoint: ManagedIdentityEndpointConfig = setting("Broker__ManagedIdentityEndpoint", ManagedIdentityEndpointConfig)
    audit: AuditConfig = setting("Broker__Audit", AuditConfig)
    tracing: TracingConfig = setting("Broker__Tracing", TracingConfig)
    log_level: str = setting("Logging__LogLevel__Default", "INFO", parse=checks.log_level, live=True, default_doc="`Information`", values_doc="level", doc="`Trace`, `Debug`, `Information`, `Warning`, `Error`, `Critical` or `None` (nothing), or Python's names.")
    warnings: tuple[str, ...] = ()

    @classmethod
    def settle(cls, v: Draft) -> None:
        origin = "Broker__Listen"
        if not v.given("listen"):
            kestrel = tuple(a for e in (v.kestrel.endpoints.values() if v.kestrel else ()) for a in e.url)
            origin = "Kestrel__Endpoints" if kestrel else URLS_VARIABLE
            chosen = kestrel or v.aspnetcore_urls or (DEFAULT_LISTEN,)
            v.set("listen", tuple(dataclasses.replace(a, key=origin) for a in chosen))
        for i, address in enumerate(v.listen):
            if any(address.collides(other) for other in v.listen[:i]):
                v.problems.error(origin, f"{address} is given twice")
        for name, caller in v.security.callers.items() if v.security is not None else ():
            unknown = [api for api in caller.allowed_apis or () if api not in v.downstream_apis]
            if unknown:
                v.problems.error(f"Broker__Callers__{name}__AllowedApis", f"{', '.join(unknown)}: not a configured DownstreamApis name")
        if v.ops_listen is not None and any(v.ops_listen.collides(a) for a in v.listen):
            v.error("ops_listen", f"{v.ops_listen} collides with the API listener ({origin}); use another port")


__all__ = ["DEFAULT_LISTEN", "DEFAULT_OPS_LISTEN", "Listen", "RedisCacheConfig"]
