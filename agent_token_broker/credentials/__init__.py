"""Blueprint credential sources: each turns one ``AzureAd__ClientCredentials__N`` entry into
the ``client_credential`` value for ``msal.ConfidentialClientApplication``.

See ``credentials.md`` beside this package for the design.
"""

from agent_token_broker.credentials.assertion_file import AssertionFile, SignedAssertionFileSource
from agent_token_broker.credentials.base import CredentialError, CredentialSource
from agent_token_broker.credentials.cert_assertion import CertificateAssertion
from agent_token_broker.credentials.certificate import CertificateSource
from agent_token_broker.credentials.client_secret import ClientSecretSource
from agent_token_broker.credentials.factory import build_sources, check_credentials
from agent_token_broker.credentials.managed_identity import ManagedIdentitySource

__all__ = [
    "AssertionFile",
    "CertificateAssertion",
    "CertificateSource",
    "ClientSecretSource",
    "CredentialError",
    "CredentialSource",
    "ManagedIdentitySource",
    "SignedAssertionFileSource",
    "build_sources",
    "check_credentials",
]
