"""Token cache: keys, single-flight, refresh-ahead, stale-on-error (Entra-agnostic)."""

from broker.cache.engine import TokenCache
from broker.cache.keys import token_key
from broker.cache.observer import CacheObserver, NullObserver
from broker.cache.policy import CachePolicy
from broker.cache.token import AcquireError, CachedToken

__all__ = [
    "AcquireError",
    "CacheObserver",
    "CachePolicy",
    "CachedToken",
    "NullObserver",
    "TokenCache",
    "token_key",
]
