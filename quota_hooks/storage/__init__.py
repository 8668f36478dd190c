"""Usage storage: one :class:`Store` protocol, several backends.

``store_from_url`` picks a backend from a URL: ``memory://`` today; the SQLite and Redis backends
register their schemes here as they land.
"""

from __future__ import annotations

from urllib.parse import urlsplit

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

__all__ = [
    "Aggregate",
    "Counters",
    "Denial",
    "Limits",
    "MemoryStore",
    "Reservation",
    "Store",
    "UsageDelta",
    "UsageEntry",
    "store_from_url",
    "workspace_scope",
]

SCHEMES = ("memory",)


def store_from_url(url: str) -> Store:
    """A store from a URL such as ``memory://``.

    Raises :class:`ConfigurationError` naming the URL for an unknown scheme.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    raise ConfigurationError(
        f"store URL {url!r}: unknown scheme {scheme!r}; use one of "
        + ", ".join(f"{s}://" for s in SCHEMES)
    )
