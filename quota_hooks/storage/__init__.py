"""Usage storage: one :class:`Store` protocol, several backends.

``store_from_url`` picks a backend from a URL:

* ``memory://``: :class:`MemoryStore`, this process only;
* ``sqlite:///quota.db`` (relative path), ``sqlite:////var/lib/quota.db`` (absolute), with an
  optional ``?durability=sync``: :class:`SQLiteStore`, every process on the host;
* ``redis://host:6379/0`` (or ``rediss://``): ``RedisStore``, every host.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from ..errors import ConfigurationError
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
    "store_from_url",
    "workspace_scope",
]

SCHEMES = ("memory", "sqlite", "redis", "rediss")


def store_from_url(url: str) -> Store:
    """A store from a URL such as ``memory://``, ``sqlite:///quota.db`` or
    ``redis://localhost:6379/0``.

    Raises :class:`ConfigurationError` naming the URL for an unknown scheme or a bad option.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ConfigurationError(
                f"store URL {url!r}: write sqlite:///relative.db or sqlite:////absolute.db"
            )
        options = dict(parse_qsl(parts.query))
        durability = options.pop("durability", "batched")
        if options:
            raise ConfigurationError(
                f"store URL {url!r}: unknown option(s) {sorted(options)}; known: durability"
            )
        if durability not in ("batched", "sync"):
            raise ConfigurationError(
                f"store URL {url!r}: durability must be batched or sync, got {durability!r}"
            )
        return SQLiteStore(parts.path[1:], durability=durability)  # type: ignore[arg-type]
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        return RedisStore.from_url(url)
    raise ConfigurationError(
        f"store URL {url!r}: unknown scheme {scheme!r}; use one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
    )
