"""Usage storage: one :class:`Store` protocol, several backends.

``store_from_url`` picks a backend from a URL:

* ``memory://``: :class:`MemoryStore`, this process only;
* ``sqlite:///quota.db`` (relative path), ``sqlite:////var/lib/quota.db`` (absolute), with an
  optional ``?durability=sync``: :class:`SQLiteStore`, every process on the host;
* ``redis://host:6379/0`` (or ``rediss://``): ``RedisStore``, every host;
* ``redis+cluster://host:7000,host:7001`` (or ``rediss+cluster://``): ``RedisStore`` on a
  Redis Cluster, workspaces spread over its nodes.

A Redis URL may name the store's key prefix: ``?prefix=quota-hooks``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigurationError
from ._urls import redacted
from .base import (
    Aggregate,
    Counters,
    Denial,
    Limits,
    Reservation,
    Store,
    UsageDelta,
    UsageEntry,
    workspace_scope,
)
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "Aggregate",
    "Counters",
    "Denial",
    "Limits",
    "MemoryStore",
    "Reservation",
    "SQLiteStore",
    "Store",
    "UsageDelta",
    "UsageEntry",
    "redacted",
    "store_from_url",
    "workspace_scope",
]

SCHEMES = ("memory", "sqlite", "redis", "rediss", "redis+cluster", "rediss+cluster")


#: Query keys whose values are secrets (``?password=``, which redis-py accepts, ``?token=``,
#: ``api_key`` ...): a key holding any of these, in any case, is shown as ``***``.
def store_from_url(url: str) -> Store:
    """A store from a URL such as ``memory://``, ``sqlite:///quota.db`` or
    ``redis://localhost:6379/0``.

    Raises :class:`ConfigurationError` naming the URL for an unknown scheme or a bad option.
    """
    shown = redacted(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unencoded "[" in a password, say: "Invalid IPv6 URL"
        raise ConfigurationError(
            f"store URL {shown!r}: cannot be parsed (percent-encode the special characters "
            f"of a password: # / ? [ ] @ as %23 %2F %3F %5B %5D %40)") from exc
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ConfigurationError(
                f"store URL {shown!r}: write sqlite:///relative.db or sqlite:////absolute.db"
            )
        options = dict(parse_qsl(parts.query))
        durability = options.pop("durability", "batched")
        if options:
            raise ConfigurationError(
                f"store URL {shown!r}: unknown option(s) {sorted(options)}; known: durability"
            )
        if durability not in ("batched", "sync"):
            raise ConfigurationError(
                f"store URL {shown!r}: durability must be batched or sync, got {durability!r}"
            )
        return SQLiteStore(parts.path[1:], durability=durability)  # type: ignore[arg-type]
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from .redis import RedisStore

        return RedisStore.from_url(url)
    raise ConfigurationError(
        f"store URL {shown!r}: unknown scheme {scheme!r}; use one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
    )
