"""Value types shared by the cache and the acquire functions it calls.

The cache knows nothing of Entra: an acquire function is any
``async () -> CachedToken`` that raises :class:`AcquireError` on failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["AcquireError", "CachedToken"]


_NO_META: Mapping[str, str] = MappingProxyType({})
_ANSWER_HEAD = '{"authorizationHeader":"'


class CachedToken:
    """An access token and its times, all on the cache's clock (epoch seconds). Immutable.

    ``value`` is the secret: it is never part of ``repr()``/``str()``.
    ``refresh_at`` is the server's ``refresh_in`` hint turned into an epoch time.
    ``meta`` holds non-secret facts (``token_type``, ``scope``...).

    ``answer`` is the header routes' success body, ``{"authorizationHeader":"<type> <value>"}``,
    rendered once when the token is made (a hot key answers the same token many times) and
    dropped with it. It is the one copy of the token's bytes: ``value`` is read back out of it
    (a token that JSON would escape, never a JWT, also keeps its own copy).
    """

    __slots__ = ("_start", "_value", "acquired_at", "answer", "expires_at", "meta", "refresh_at")

    _start: int
    _value: str | None
    answer: bytes
    expires_at: float
    acquired_at: float
    refresh_at: float | None
    meta: Mapping[str, str]

    def __init__(
        self,
        value: str,
        expires_at: float,
        acquired_at: float,
        refresh_at: float | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        meta = _NO_META if meta is None else meta
        token_type = meta.get("token_type", "Bearer")
        plain = f"{token_type} {value}"
        quoted = json.dumps(plain)
        setattr_ = object.__setattr__
        setattr_(self, "answer", ('{"authorizationHeader":' + quoted + "}").encode())
        if quoted[1:-1] == plain:  # nothing escaped: the value's bytes are in the answer as they are
            setattr_(self, "_value", None)
            setattr_(self, "_start", len(_ANSWER_HEAD) + len(token_type) + 1)
        else:
            setattr_(self, "_value", value)
            setattr_(self, "_start", 0)
        setattr_(self, "expires_at", expires_at)
        setattr_(self, "acquired_at", acquired_at)
        setattr_(self, "refresh_at", refresh_at)
        setattr_(self, "meta", meta)

    @property
    def value(self) -> str:
        """The access token (read out of :attr:`answer`)."""
        if self._value is not None:
            return self._value
        return self.answer[self._start : -2].decode("ascii")

    @property
    def lifetime(self) -> float:
        """Seconds between acquisition and expiry (never negative)."""
        return max(0.0, self.expires_at - self.acquired_at)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"CachedToken is immutable (cannot set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"CachedToken is immutable (cannot delete {name})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CachedToken):
            return NotImplemented
        return (self.answer, self.expires_at, self.acquired_at, self.refresh_at, dict(self.meta)) == (
            other.answer, other.expires_at, other.acquired_at, other.refresh_at, dict(other.meta),
        )  # fmt: skip

    __hash__ = None  # type: ignore[assignment]  # equal by value, mutable-looking meta: unhashable, as before

    def __repr__(self) -> str:
        return (
            f"CachedToken(value=<redacted {len(self.value)} chars>, expires_at={self.expires_at!r}, "
            f"acquired_at={self.acquired_at!r}, refresh_at={self.refresh_at!r}, meta={dict(self.meta)!r})"
        )

    __str__ = __repr__


class AcquireError(Exception):
    """Raised by acquire functions; the message must be safe to show (no tokens).

    Args:
        message: human-readable, safe text (goes into problem+json ``detail``).
        transient: ``True`` for timeouts, connection errors, 5xx and 429: the
            cache rides these out from a still-valid cached token (static
            stability) and retries in the background. ``False`` for definitive
            refusals: the key and every entry tagged with any of ``evict_tags``
            are evicted and the error goes to the caller.
        retry_after: seconds the upstream asked us to wait (``Retry-After``);
            the cache remembers the failure that long (capped by policy).
        evict_tags: tags whose entries a definitive error evicts (e.g. the agent
            identity or the blueprint).
        status: upstream HTTP status, if any.
        error_code: upstream error code (e.g. ``AADSTS700016``), if any.
        correlation_id: upstream correlation id, if any.
        payload: extra safe fields for the edge (never tokens or secrets).
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        retry_after: float | None = None,
        evict_tags: frozenset[str] = frozenset(),
        status: int | None = None,
        error_code: str | None = None,
        correlation_id: str | None = None,
        payload: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        self.evict_tags = frozenset(evict_tags)
        self.status = status
        self.error_code = error_code
        self.correlation_id = correlation_id
        self.payload: Mapping[str, object] = dict(payload) if payload else {}

    def with_retry_after(self, retry_after: float | None) -> AcquireError:
        """A shallow copy of this error whose ``retry_after`` is replaced."""
        return AcquireError(
            self.message,
            transient=self.transient,
            retry_after=retry_after,
            evict_tags=self.evict_tags,
            status=self.status,
            error_code=self.error_code,
            correlation_id=self.correlation_id,
            payload=self.payload,
        )

    def remembered(self, *, for_other_key: bool = False) -> AcquireError:
        """The copy the negative cache keeps: its revocation already applied (no ``evict_tags``,
        so answering from it never revokes again). ``for_other_key``: the copy a revoked
        sibling key keeps, without the correlation id of the call that was refused."""
        return AcquireError(
            self.message,
            transient=self.transient,
            retry_after=self.retry_after,
            status=self.status,
            error_code=self.error_code,
            correlation_id=None if for_other_key else self.correlation_id,
            payload=self.payload,
        )

    def __repr__(self) -> str:
        return (
            f"AcquireError({self.message!r}, transient={self.transient!r}, "
            f"retry_after={self.retry_after!r}, status={self.status!r}, error_code={self.error_code!r})"
        )
