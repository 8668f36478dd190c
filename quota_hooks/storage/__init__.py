"""Usage storage: one :class:`Store` protocol, several backends.

``store_from_url`` picks a backend from a URL:

* ``memory://``: :class:`MemoryStore`, this process only;
* ``sqlite:///quota.db`` (relative path), ``sqlite:////var/lib/quota.db`` (absolute), with an
  optional ``?durability=sync``: :class:`SQLiteStore`, every process on the host;
* ``redis://host:6379/0`` (or ``rediss://``): ``RedisStore``, every host.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

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
    "redacted",
    "store_from_url",
    "workspace_scope",
]

SCHEMES = ("memory", "sqlite", "redis", "rediss")


def redacted(url: str) -> str:
    """``url`` fit for a message or a log: its password (and its query, where tokens go)
    replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            return url
        user = parts.username or ""
        host, _, port = parts.netloc.rpartition("@")[2].partition(":")
        netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
        return urlunsplit(parts._replace(netloc=netloc, query="***" if parts.query else ""))
    except ValueError:
        return "<a store URL that could not be parsed>"


def store_from_url(url: str) -> Store:
    """A store from a URL such as ``memory://``, ``sqlite:///quota.db`` or
    ``redis://localhost:6379/0``.

    Raises :class:`ConfigurationError` naming the URL for an unknown scheme or a bad option.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    shown = redacted(url)
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
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        return RedisStore.from_url(url)
    raise ConfigurationError(
        f"store URL {shown!r}: unknown scheme {scheme!r}; use one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
    )
