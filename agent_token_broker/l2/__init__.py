"""Optional shared L2 token cache on Redis (encrypted, cross-replica single flight, fail-open).

See ``docs/shared-cache.md``. Built by :func:`build_shared_cache` from
``Broker__Cache__Redis__*``; :class:`SharedTokenCache` wraps the acquire functions
the L1 cache calls, so the L1 engine knows nothing of Redis.

The Redis client (``redis``, the ``redis`` extra) is imported only when a shared cache is built:
a broker without ``Broker__Cache__Redis__*`` runs without it installed, and one configured
for it without the client gets one clear configuration error (:func:`redis_client_missing`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from agent_token_broker.cache.policy import CachePolicy
from agent_token_broker.l2.observer import CountingObserver, NullObserver, SharedCacheObserver
from agent_token_broker.l2.sealing import KeyRing, KeyRingError, SealError, load_key_ring
from agent_token_broker.l2.shared import SharedTokenCache
from agent_token_broker.settings.model import RedisCacheConfig

__all__ = [
    "CountingObserver",
    "KeyRing",
    "KeyRingError",
    "NullObserver",
    "SealError",
    "SharedCacheObserver",
    "SharedTokenCache",
    "build_shared_cache",
    "redis_client_missing",
]

REDIS_DISTRIBUTION = "redis"
INSTALL_HINT = "pip install 'agent-token-broker[redis]' (container image: --build-arg EXTRAS=redis)"


def redis_client_missing() -> str | None:
    """``None`` when the Redis client can be imported, else a one-line configuration error."""
    try:
        found = importlib.util.find_spec(REDIS_DISTRIBUTION) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return f"the shared cache needs the Redis client, which is not installed: {INSTALL_HINT}"


def build_shared_cache(
    config: RedisCacheConfig,
    policy: CachePolicy,
    *,
    namespace: str,
    observer: SharedCacheObserver | None = None,
    clock: Callable[[], float] | None = None,
) -> SharedTokenCache:
    """The shared cache for one blueprint (``namespace``): keys loaded, client built (not connected).

    Raises:
        KeyRingError: the encryption key files are missing or malformed.
        ValueError: the username/password files cannot be read.
    """
    from agent_token_broker.l2.store import RedisStore, build_client  # needs the optional redis client

    keys = load_key_ring(config.encryption_key_files, namespace=namespace.strip().lower())
    counting = CountingObserver(observer)
    store = RedisStore(build_client(config), config, counting)
    kwargs = {"clock": clock} if clock is not None else {}
    return SharedTokenCache(
        store,
        keys,
        policy,
        share_obo=config.share_obo,
        lock_ttl=config.lock_ttl_seconds,
        observer=counting,
        prefix=config.key_prefix,
        **kwargs,
    )
