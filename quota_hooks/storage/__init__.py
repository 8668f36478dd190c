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

from urllib.parse import parse_qsl, unquote_plus, urlsplit

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

SCHEMES = ("memory", "sqlite", "redis", "rediss", "redis+cluster", "rediss+cluster")


#: Query keys whose values are secrets (``?password=``, which redis-py accepts, ``?token=``,
#: ``api_key`` ...): a key holding any of these, in any case, is shown as ``***``.
_SECRET_KEYS = ("password", "pass", "pwd", "token", "secret", "key", "auth")
_UNPARSABLE = "<a store URL that could not be parsed>"


def _secret_key(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return any(word in lowered for word in _SECRET_KEYS)


def redacted(url: str) -> str:
    """``url`` fit for a message or a log: any user info shown as ``user:***@`` (``***@``
    without a user name), the values of query keys that look like secrets (``password``,
    ``token``, ``key`` ...) as ``***``, a port that is not a number as ``***``.

    It does not trust ``urlsplit``: a password with an unencoded ``#``, ``/``, ``?`` or
    ``[`` cuts a URL in the wrong place there (redis-py then reads part of the password as
    the port), so the user info runs here to the last ``@``, wherever it is."""
    try:
        scheme, sep, rest = url.partition("://")
        if not sep:
            return _redacted_query(url)
        at = rest.rfind("@")
        userinfo, hostpart = (rest[:at], rest[at + 1:]) if at >= 0 else (None, rest)
        cut = min((i for i in (hostpart.find(c) for c in "/?#") if i >= 0), default=len(hostpart))
        authority, tail = hostpart[:cut], hostpart[cut:]
        shown = f"{scheme}://"
        if userinfo is not None:
            user, colon, _ = userinfo.partition(":")
            shown += f"{user}:***@" if colon else "***@"  # no colon: it may be the password
        # A Redis Cluster URL lists several nodes: host:port,host:port.
        shown += ",".join(_redacted_node(node) for node in authority.split(","))
        return shown + _redacted_query(tail)
    except Exception:
        return _UNPARSABLE


def _redacted_node(authority: str) -> str:
    """``host:port`` with a port that is not a number as ``***``."""
    if authority.startswith("["):  # an IPv6 address
        close = authority.find("]")
        host, port = (authority[:close + 1], authority[close + 1:].removeprefix(":")) if (
            close >= 0) else (authority, "")
    else:
        host, _, port = authority.partition(":")
    return host + (f":{port if port.isdigit() else '***'}" if port else "")


def _redacted_query(text: str) -> str:
    """A path, query and fragment with the values of its secret query keys as ``***``
    (a value runs to the next ``&``: an unencoded ``#`` does not end it); a fragment of
    the path (a URL has none of use here) is shown as ``#***``."""
    path, qmark, query = text.partition("?")
    path, hashmark, _ = path.partition("#")
    if hashmark:
        path += "#***"
    if not qmark:
        return path
    items = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        items.append(f"{name}=***" if eq and _secret_key(name) else item)
    return f"{path}?" + "&".join(items)


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
