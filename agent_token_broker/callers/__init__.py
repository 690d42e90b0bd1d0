"""Who is asking: the caller's identity, found once per connection (docs/callers.md).

* :mod:`.identity`: :class:`CallerIdentity` and :func:`identify` (a transport in, an identity out);
* :mod:`.sockdiag`: the TCP loopback peer's socket owner by an exact netlink ``sock_diag`` lookup;
* :mod:`.procnet`: the same from ``/proc/net/tcp`` and ``tcp6`` (the fallback: a full table scan).
"""

from agent_token_broker.callers.identity import CallerIdentity, identify

# The label of callers no Broker__Callers entry matches (metrics, audit): labels stay bounded by
# the configuration, never a uid.
OTHER = "other"

__all__ = ["OTHER", "CallerIdentity", "identify"]
