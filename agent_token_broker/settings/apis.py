"""The ``DownstreamApis`` and ``Sidecar`` sections."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from agent_token_broker.settings.model import (
    DEFAULT_ALLOW_OVERRIDES,
    OVERRIDE_ROUTES,
    CaseInsensitiveMapping,
    DownstreamApiConfig,
    SidecarConfig,
)
from agent_token_broker.settings.reader import Section

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_UNSUPPORTED_TOKEN_OPTIONS = ("PopPublicKey", "PopClaims", "ManagedIdentity", "LongRunningWebApiSessionKey")


def read_downstream_apis(section: Section) -> CaseInsensitiveMapping[DownstreamApiConfig]:
    apis: list[tuple[str, DownstreamApiConfig]] = []
    if section.node is not None and section.node.value and not section.node.children:
        section.problems.error(section.path, "must be an object of named APIs")
    for name in section.names():
        api = _read_api(section.sub(name), name)
        if api is not None:
            apis.append((name, api))
    return CaseInsensitiveMapping(apis)


def _read_api(entry: Section, name: str) -> DownstreamApiConfig | None:
    problems = entry.problems
    before = len(problems.errors)
    base_url = entry.get_str("BaseUrl")
    if base_url is not None:
        _check_base_url(entry, base_url)
    relative_path = entry.get_str("RelativePath", "") or ""
    method = (entry.get_str("HttpMethod", "GET") or "GET").upper()
    if method not in HTTP_METHODS:
        problems.error(entry.key("HttpMethod"), f"must be one of {', '.join(HTTP_METHODS)}, got {method!r}")
    scopes = entry.get_list("Scopes") or ()
    allowed_scopes = entry.get_list("AllowedScopes")
    request_app_token = entry.get_bool("RequestAppToken", False)
    accept = entry.get_str("AcceptHeader")
    content_type = entry.get_str("ContentType")
    options = entry.sub("AcquireTokenOptions")
    tenant = options.get_str("Tenant")
    scheme = options.get_str("AuthenticationScheme")
    if scheme is not None and scheme.lower() != "bearer":
        problems.error(options.key("AuthenticationScheme"), f"only Bearer is supported, got {scheme!r}")
    for unsupported in _UNSUPPORTED_TOKEN_OPTIONS:
        if options.has(unsupported):
            options.sub(unsupported)
            problems.error(options.key(unsupported), "not supported by this broker")
    options.check_unknown(ignored=("CorrelationId",), ignored_reason="ignored by this broker")
    entry.check_unknown()
    if len(problems.errors) > before:
        return None
    return DownstreamApiConfig(
        name=name,
        scopes=scopes,
        base_url=base_url,
        relative_path=relative_path,
        http_method=method,
        request_app_token=request_app_token,
        accept_header=accept,
        content_type=content_type,
        tenant=tenant,
        allowed_scopes=allowed_scopes,
    )


def _check_base_url(entry: Section, url: str) -> None:
    key = entry.key("BaseUrl")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        entry.problems.error(key, "is not a valid URL")
        return
    if not hostname:
        entry.problems.error(key, f"must be an absolute URL with a host, got {url!r}")
    elif parts.username is not None or parts.password is not None:
        entry.problems.error(key, "must not contain user information")
    elif parts.fragment:
        entry.problems.error(key, "must not contain a fragment")
    elif parts.scheme.lower() == "http":
        if not is_loopback_host(hostname):
            entry.problems.error(key, "must be https (plain http is allowed only for loopback hosts)")
    elif parts.scheme.lower() != "https":
        entry.problems.error(key, f"must be an https URL, got scheme {parts.scheme!r}")


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_sidecar(section: Section) -> SidecarConfig:
    overrides = section.sub("AllowOverrides")
    allow = {route: overrides.get_bool(route, DEFAULT_ALLOW_OVERRIDES[route]) for route in OVERRIDE_ROUTES}
    overrides.check_unknown()
    redirects = section.get_bool("AllowOutboundRedirects", False)
    section.check_unknown(
        ignored=("PopValidation",), ignored_reason="ignored (PoP validation is not implemented)"
    )
    return SidecarConfig(allow_overrides=CaseInsensitiveMapping(allow), allow_outbound_redirects=redirects)
