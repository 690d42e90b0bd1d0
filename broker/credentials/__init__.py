"""Blueprint credential sources: each turns one ``AzureAd__ClientCredentials__N`` entry into
the ``client_credential`` value for ``msal.ConfidentialClientApplication``.

See ``credentials.md`` beside this package for the design.
"""

from broker.credentials.assertion_file import AssertionFile, SignedAssertionFileSource
from broker.credentials.base import CredentialError, CredentialSource
from broker.credentials.cert_assertion import CertificateAssertion
from broker.credentials.certificate import CertificateSource
from broker.credentials.client_secret import ClientSecretSource
from broker.credentials.factory import build_sources
from broker.credentials.managed_identity import ManagedIdentitySource

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
]
