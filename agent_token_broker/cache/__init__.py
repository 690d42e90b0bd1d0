"""Token cache: keys, single-flight, refresh-ahead, stale-on-error (Entra-agnostic)."""

from agent_token_broker.cache.engine import TokenCache
from agent_token_broker.cache.entry import KeyState
from agent_token_broker.cache.keys import token_key
from agent_token_broker.cache.observer import CacheObserver, NullObserver
from agent_token_broker.cache.policy import CachePolicy
from agent_token_broker.cache.token import AcquireError, CachedToken

__all__ = [
    "AcquireError",
    "CacheObserver",
    "CachePolicy",
    "CachedToken",
    "KeyState",
    "NullObserver",
    "TokenCache",
    "token_key",
]
