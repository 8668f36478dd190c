"""`RedisStore`: usage in Redis or a Redis Cluster, shared exactly by every process on every host.

* Every write and every limit check is a Lua script (``quota_hooks/storage/lua/``, shipped as
  package files): a reservation checks every limit of every scope and holds the usage
  atomically, and a settle undoes its estimate exactly once.
* Keys (schema 2, :data:`SCHEMA`): ``<prefix>:{<hash of the scope>}:...``. Tenant ids never
  appear in key names, so no id can collide with another or inject into a key. Each scope has
  its own hash tag: a Cluster spreads workspaces over its nodes. On one Redis a call's scopes
  are one atomic script; on a Cluster each scope is checked and held atomically in its own
  slot, in order, and a refusal gives the earlier holds back (no limit is ever passed).
* A scope is 4 keys (lua/lib.lua): one hash with both windows, the pending reservations and
  markers; the pending expiries; one hash a month (cost, breakdowns); the recent records.
  Numbers are packed binary, records compact JSON. Every key has a TTL, set when the key is
  created or must move, except the ``<prefix>:schema`` marker.
* Time: by default the scripts read the server's ``TIME``, so client clock skew does not move a
  window (``use_server_time=False`` uses the ``now`` that the manager passes, for tests with
  an injected clock). The budget month is the caller's (it depends on the policy's zone).
* Round trips: concurrent calls of one process share them (:mod:`._batch`): what is queued while
  a batch is on the wire goes as one run of each script, which reads and writes each scope once.
  Leases (``lease_calls``, off by default) hand out a call's share of a slice of the limits
  held in Redis with no round trip at all.

Sync methods use ``redis.Redis`` (or ``RedisCluster``); async ones redis-py's asyncio clients,
one per event loop. Redis errors become :class:`~quota_hooks.errors.StorageError`.

A Redis that hangs (SIGSTOPped, a partition) never holds a call for long: connecting and each
reply are bounded (``socket_connect_timeout``, 1 s, and ``socket_timeout``, 0.5 s by default),
and so is the wait for a free pooled connection in a burst (``timeout``, 1 s); each is
settable in the URL (``redis://host/0?socket_timeout=1``; raise it for a process that runs
thousands of concurrent calls on one event loop, where a reply can wait that long for its
turn). A timeout is not retried; a dropped connection is retried once. A timeout is a store
failure like any other: ``fail_open`` or ``fail_closed`` applies.

Nothing recorded is lost to an outage: a commit that fails is kept in a bounded backlog
(``backlog_size``) and replayed once Redis answers again. Each commit carries an id that the
script remembers for 150 to 300 s, so a commit that Redis ran after its reply timed out is
never counted twice. Records beyond the backlog are dropped, logged and counted in
``dropped_records``; :meth:`RedisStore.health` says so meanwhile (the status: ``degraded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
import struct
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeVar, cast
from urllib.parse import unquote

import anyio.to_thread

try:
    import redis
    import redis.asyncio as aredis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("RedisStore needs redis-py: pip install 'quota-hooks[redis]'") from exc

from .._exit import close_at_exit
from .._fork import renew_after_fork
from ..errors import ConfigurationError, StorageError
from ..usage import UsageRecord
from ._batch import AsyncGroupCommit, GroupCommit
from ._rows import decode, encode
from ._urls import redacted
from .base import (
    MAX_BREAKDOWN_NAMES,
    Aggregate,
    Breakdown,
    Counters,
    Denial,
    Limits,
    PolicyTable,
    Reservation,
    StoredPolicy,
    UsageDelta,
    UsageEntry,
    totals_key,
)

__all__ = ["CONNECT_TIMEOUT", "DEFAULT_TIMEOUT", "POOL_TIMEOUT", "SCHEMA", "RedisStore"]

logger = logging.getLogger("quota_hooks")

_SCRIPTS = ("commit", "reserve", "release", "counters", "claim", "policies", "put_policies",
            "append_alert", "reset_budget")
#: The scripts that run a batch of calls at once (lua/lib.lua's each_call).
_BATCHED = frozenset({"commit", "reserve", "release", "counters"})
#: The key layout this version reads and writes (``<prefix>:schema`` holds it).
SCHEMA = "2"
#: The field prefix of each breakdown in a month's hash.
_BREAKDOWN_MARK = {"model": "m:", "api_method": "a:", "day": "d:"}
#: How the scripts pack numbers (lua/lib.lua): window counts, a breakdown row, two times.
_COUNTS = struct.Struct("<5q")
_AGGREGATE = struct.Struct("<11q")
#: A breakdown row written before the token mix was kept (cached, cache-write and reasoning
#: tokens read as 0).
_AGGREGATE_8 = struct.Struct("<8q")
_TIMES = struct.Struct("<2d")
_COMMIT_NUMBERS = struct.Struct("<17qd")
_PART = struct.Struct("<3q")
#: A lease takes at most 1/8 of a limit's room, so that processes sharing it share the room.
_LEASE_SHARE = 8
#: Lease shares handed out and not settled yet that a store remembers (to settle each once).
_MAX_SHARES = 100_000


@dataclass(slots=True)
class _Lease:
    """A slice of a scope's limits this process holds in Redis and hands out call by call."""

    id: str
    scopes: tuple[str, ...]
    month: str
    limits: tuple[Limits | None, ...]
    at: float
    expires_at: float
    left: list[int]
    """Requests, tokens and nano-dollars not handed out yet."""
    until: float
    """time.monotonic() after which the lease hands out nothing more."""
    calls: int = 0


@functools.lru_cache(maxsize=65_536)
def _tag(scope: str) -> str:
    """A scope's hash tag: the first 24 hex digits of its SHA-256 (computed once per scope,
    not on every call)."""
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _limits_of(scopes: Sequence[str], limits: Mapping[str, Limits]) -> tuple[Limits | None, ...]:
    return tuple(limits.get(scope) for scope in scopes)


def _settles(reservation: Reservation | None) -> tuple[str, bytes | str]:
    """The pending id a commit or release settles, and the part of it (a call's share of a
    lease, ``"<lease id>/<n>"``; '' for all of it)."""
    if reservation is None:
        return "", ""
    lease, slash, _ = reservation.id.partition("/")
    if not slash:
        return reservation.id, ""
    delta = reservation.delta
    return lease, _PART.pack(delta.requests, delta.tokens, delta.cost_nanos)
#: Seconds a commit's id is remembered (in a hash per window, the current and the one
#: before are checked): a commit replayed within 150 s, and up to 300 s, after it ran is
#: never counted twice.
_DONE_WINDOW = 150
_LONG_TTL = 400 * 86400
#: Connection options a Cluster's async client takes from the sync one.
_CLUSTER_OPTIONS = ("username", "password", "socket_timeout", "socket_connect_timeout",
                    "ssl", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")

T = TypeVar("T")
#: A call: a script's or a read's name, its keys and its arguments.
_Call = tuple[str, Sequence[str], Sequence[Any]]
#: A store operation as a generator of calls: see RedisStore._drive.
_Plan = Generator[_Call, Any, T]
#: A script's run for a batch: its name, the calls it answers (their indexes), keys, args.
_Run = tuple[str, list[int], list[str], list[Any]]


#: Failures after which Redis may or may not have run a call: a commit is held for replay,
#: a reserve's hold is given back once Redis answers (a Cluster that is down, or moving
#: slots, is one).
_UNANSWERED = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
               redis.exceptions.TryAgainError)
#: Failures after which a commit is held for replay: no answer, or a refusal that passes (out
#: of memory, a replica that is read-only after a failover, a server still loading, a
#: primary that is down). Redis refuses these before running the script.
_HELD = (*_UNANSWERED, redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
         redis.exceptions.BusyLoadingError, redis.exceptions.MasterDownError)


def _held(exc: StorageError) -> bool:
    """True when a failed commit is held for replay: Redis did not answer, refused it for a
    while (:data:`_HELD`), or failed for a cause not known (kept rather than lost)."""
    return exc.__cause__ is None or isinstance(exc.__cause__, _HELD)


def _as_redis_error(exc: BaseException) -> redis.RedisError:
    """redis-py's Cluster client says it reached no node with an exception that is not a
    RedisError: it is a connection failure."""
    if isinstance(exc, redis.RedisError):
        return exc
    return redis.ConnectionError(str(exc))


def _command(client: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """A call that is not a script, on a sync client (its result) or an async one (an
    awaitable)."""
    if name == "register":
        pipe = client.pipeline(transaction=False)
        pipe.sadd(keys[0], *args)
        pipe.expire(keys[0], _LONG_TTL)
        return pipe.execute()
    if name == "hgetall":
        return client.hgetall(keys[0])
    if name == "lrange":
        return client.lrange(keys[0], *args)
    if name == "smembers":
        return client.smembers(keys[0])
    raise ValueError(f"unknown Redis call {name!r}")  # pragma: no cover - a bug


#: Seconds to connect, to wait for a reply, and to wait for a free pooled connection, unless
#: the store URL says otherwise. Redis answers in well under a millisecond when it is well.
DEFAULT_TIMEOUT = 0.5
#: Seconds after Redis failed to answer during which commits go straight to the backlog.
_QUIET_AFTER_FAILURE = 1.0
#: Seconds to open a connection (a burst opens many at once on a busy event loop; a server
#: that hangs still accepts connections, so this bounds only an unreachable host).
CONNECT_TIMEOUT = 1.0
#: Seconds a call waits for a free pooled connection when every one is busy (a burst of
#: calls larger than ``max_connections``), unless the URL says otherwise (``?timeout=``).
POOL_TIMEOUT = 1.0


def _pool_options(max_connections: int, *, asyncio_: bool = False) -> dict[str, Any]:
    """Pool options for ``from_url`` (the URL's own query options win over these)."""
    if asyncio_:
        from redis.asyncio.retry import Retry as ARetry

        retry: Any = ARetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    else:
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    return {
        "max_connections": max_connections,
        "socket_timeout": DEFAULT_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "timeout": POOL_TIMEOUT,
        # A dropped connection is tried once more; a timeout is not (it would double it).
        "retry": retry,
    }


#: Options of a store URL that are quota-hooks' own (redis-py knows none of them).
_OWN_OPTIONS = {"prefix": str, "lease_calls": int, "lease_seconds": float, "durability": str}
_KIND_NAMES = {str: "text", int: "a whole number", float: "a number"}


def _own_options(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without quota-hooks' own options (``?prefix=``, ``?lease_calls=``,
    ``?lease_seconds=``), and those options."""
    base, qmark, query = url.partition("?")
    if not qmark:
        return url, {}
    found: dict[str, Any] = {}
    kept = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        kind = _OWN_OPTIONS.get(name)
        if kind is None:
            if item:
                kept.append(item)
            continue
        try:
            found[name] = kind(unquote(value))
        except ValueError:
            raise ConfigurationError(
                f"store URL {redacted(url)!r}: {name} must be {_KIND_NAMES[kind]}, got "
                f"{unquote(value)!r:.40}") from None
    return (base + "?" + "&".join(kept) if kept else base), found


def _cluster_client(url: str, max_connections: int) -> RedisCluster:
    """A ``RedisCluster`` on the nodes of a ``redis+cluster://a:1,b:2/?options`` URL."""
    scheme, _, rest = url.partition("://")
    plain = scheme.lower().removesuffix("+cluster")
    userinfo, at, hosts = rest.rpartition("@")
    hosts, slash, tail = hosts.partition("/")
    query = tail.partition("?")[2] if slash else hosts.partition("?")[2]
    hosts = hosts.partition("?")[0]
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ConfigurationError(
                f"store URL {redacted(url)!r}: a Redis Cluster URL lists its nodes as "
                f"host:port[,host:port...], got {item.strip()!r:.60}")
        nodes.append(ClusterNode(host, int(port)))  # type: ignore[no-untyped-call]
    # redis-py reads the options (and the credentials) of a URL: one of the first node's. A
    # Cluster's pools do not block (a burst beyond max_connections fails, it does not wait):
    # ?timeout= has no meaning there.
    query = "&".join(item for item in query.split("&")
                     if item and item.partition("=")[0] != "timeout")
    first = f"{plain}://{userinfo}{at}{nodes[0].host}:{nodes[0].port}"
    options = _pool_options(max_connections)
    options.pop("timeout")
    # A node that does not answer fails the call at once (fail_open or fail_closed decides),
    # instead of redis-py's ten attempts over the cluster's layout.
    options["retry"] = Retry(NoBackoff(), 0)
    return RedisCluster.from_url(first + ("?" + query if query else ""), startup_nodes=nodes,
                                 **options)


#: redis-py's messages about a URL that quote nothing of it but an option's name.
_SAFE_URL_ERRORS = re.compile(
    r"Invalid value for '[A-Za-z_]{1,64}' in connection URL\.|"
    r"Redis URL must specify one of the following schemes \(redis://, rediss://, unix://\)|"
    r"Invalid IPv6 URL")
#: Characters that cut an unencoded password into pieces a parser may show on their own.
_CUTS = re.compile(r"[#/?:@\[\]&=]")


def _url_error(exc: BaseException) -> str:
    text = str(exc)
    if _SAFE_URL_ERRORS.fullmatch(text):
        return text
    return (f"redis-py cannot use it ({type(exc).__name__}; its message is not shown, as it "
            "may quote the password): check the host, port and database, and percent-encode "
            "the special characters of a password (# / ? [ ] @ as %23 %2F %3F %5B %5D %40)")


def _secrets(url: str | None, kwargs: Mapping[str, Any]) -> tuple[str, ...]:
    """The password of a store's URL and connection options, and the pieces of it a message
    could show (3 characters or more), longest first: what an error must not say. A user
    name is not a secret (it is often part of the host's name: ``quota@quota-redis``), but
    user info without a colon may be a password, and is one here."""
    found: set[str] = set()
    value = kwargs.get("password")
    if isinstance(value, str):
        found.add(value)
    if url:
        rest = url.partition("://")[2]
        at = rest.rfind("@")
        if at >= 0:
            userinfo = rest[:at]
            user, colon, password = userinfo.partition(":")
            secret = password if colon else user
            found.update((secret, unquote(secret), *_CUTS.split(secret),
                          *_CUTS.split(unquote(secret))))
        for item in url.partition("?")[2].split("&"):
            name, eq, value = item.partition("=")
            if eq and any(word in name.lower() for word in _SECRET_WORDS):
                found.update((value, unquote(value), *_CUTS.split(value)))
    return tuple(sorted((s for s in found if len(s) >= 3), key=len, reverse=True))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, in any case (redis-py shows a
    host in lower case)."""
    if not secrets:
        return text
    return re.sub("|".join(map(re.escape, secrets)), "***", text, flags=re.IGNORECASE)


#: Query keys whose values are secrets (as :func:`quota_hooks.storage.redacted` has them).
_SECRET_WORDS = ("password", "pass", "pwd", "token", "secret", "key", "auth")


def _source(name: str) -> str:
    lua = resources.files("quota_hooks.storage") / "lua"
    return (lua / "lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _name(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """The :class:`~quota_hooks.storage.base.Store` in Redis (see the module doc).

    Args:
        client: a ``redis.Redis``; or use :meth:`from_url`.
        url: the URL the async clients connect to (defaults to the client's own settings).
        prefix: namespace of every key.
        recent_capacity: records kept per scope for ``recent()``.
        use_server_time: read the clock from Redis ``TIME`` (default) or trust ``now``.
        max_connections: the size of each async client's connection pool.
        backlog_size: commits kept while Redis does not answer, replayed when it does.
        lease_calls: 0 (the default) for no leases; else a process leases up to this many
            calls' worth of a scope's limits at once (see the module doc).
        lease_seconds: how long a lease hands out shares before what is left goes back.
        durability: ``"sync"`` (the default: a commit returns once Redis has it) or
            ``"batched"`` (a writer thread sends the commits queued meanwhile as one run;
            :meth:`flush` waits for it, reads wait for it, :meth:`close` flushes; a crash loses
            what is queued, as SQLite's batched mode does).
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        url: str | None = None,
        prefix: str = "quota-hooks",
        recent_capacity: int = 1000,
        use_server_time: bool = True,
        max_connections: int = 50,
        backlog_size: int = 10_000,
        lease_calls: int = 0,
        lease_seconds: float = 1.0,
        durability: Literal["sync", "batched"] = "sync",
    ) -> None:
        if durability not in ("sync", "batched"):
            raise ConfigurationError(
                f"durability must be 'sync' or 'batched', got {durability!r}")
        if isinstance(lease_calls, bool) or not isinstance(lease_calls, int) or lease_calls < 0:
            raise ConfigurationError(
                f"lease_calls must be a whole number >= 0 (0: no leases), got {lease_calls!r}")
        if not isinstance(lease_seconds, int | float) or not 0 < lease_seconds <= 10:
            raise ConfigurationError(
                f"lease_seconds must be a number of seconds in (0, 10], got {lease_seconds!r}")
        if not prefix or any(c in prefix for c in "{}"):
            raise ConfigurationError(f"prefix must be non-empty, without braces, got {prefix!r}")
        if isinstance(recent_capacity, bool) or not isinstance(recent_capacity, int) or (
            recent_capacity < 1
        ):
            raise ConfigurationError(
                f"recent_capacity must be a whole number >= 1, got {recent_capacity!r}"
            )
        self.client = client
        self.url = url
        self.prefix = prefix
        self.recent_capacity = recent_capacity
        self.use_server_time = use_server_time
        self.max_connections = max_connections
        self._cluster = isinstance(client, RedisCluster)
        self._sources = {name: _source(name) for name in _SCRIPTS}
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest()
                      for name, src in self._sources.items()}
        self._batch: GroupCommit[_Call] = GroupCommit(self._send)
        self._unregistered: set[str] = set()
        self._schema_ok = False
        self.lease_calls = lease_calls
        self.lease_seconds = float(lease_seconds)
        self._leases: dict[tuple[tuple[str, ...], str], _Lease] = {}
        self._retired: list[_Lease] = []
        self._leasing: set[tuple[tuple[str, ...], str]] = set()
        self._lease_waiters: dict[tuple[tuple[str, ...], str],
                                  list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._shares: dict[str, _Lease] = {}
        self._lease_lock = threading.Lock()
        self._lease_done = threading.Condition(self._lease_lock)
        self._next_sweep = 0.0
        self._replay_after = 0.0
        self.durability = durability
        self._queue: deque[tuple[UsageEntry, Reservation | None, str]] = deque()
        self._queue_ready = threading.Condition()
        self._enqueued = self._processed = 0
        self._writer: threading.Thread | None = None
        self._stopping = False
        self._read_wait = 1.0
        self._backlog: deque[tuple[UsageEntry, Reservation | None, str, float]] = deque()
        self._backlog_size = backlog_size
        self._backlog_lock = threading.Lock()
        self._orphans: deque[tuple[Reservation, float]] = deque()
        self._unanswered_at: float | None = None
        self._closed = False
        close_at_exit(self, 2)  # a plain exit still replays what the backlog holds
        renew_after_fork(self)
        self.dropped_records = 0
        """Commits lost because the backlog was full while Redis did not answer (logged)."""
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, AsyncGroupCommit[_Call]]
        ] = weakref.WeakKeyDictionary()
        try:  # a store of another layout is refused now, when Redis answers (else at first use)
            self._check_schema()
        except StorageError as exc:
            raise ConfigurationError(str(exc)) from None
        except redis.RedisError:
            pass

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 50, **kwargs: Any) -> RedisStore:
        """A store on ``redis://host:port/db`` (``rediss://`` for TLS), with pools of at most
        ``max_connections`` connections that make callers wait, briefly, rather than fail;
        or on a Redis Cluster: ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster``
        for TLS), any of its nodes (the others are found from them).

        The URL's query sets redis-py's connection options, e.g.
        ``?socket_timeout=0.5&socket_connect_timeout=1&timeout=1``; unset, they are
        :data:`DEFAULT_TIMEOUT`, :data:`CONNECT_TIMEOUT` and :data:`POOL_TIMEOUT`. And
        ``?prefix=``, ``?lease_calls=`` and ``?lease_seconds=`` set the arguments of the same
        names.
        """
        url, own = _own_options(url)
        for name, value in own.items():
            kwargs.setdefault(name, value)
        try:
            client: redis.Redis | RedisCluster
            if url.partition("://")[0].lower().endswith("+cluster"):
                client = _cluster_client(url, max_connections)
            else:
                pool = redis.BlockingConnectionPool.from_url(url,
                                                             **_pool_options(max_connections))
                client = redis.Redis(connection_pool=pool)
        except ConfigurationError:
            raise
        except (ValueError, TypeError) as exc:
            # redis-py's own text can quote part of the URL (a password with an unencoded
            # "#" is read as the port): only its fixed messages are shown.
            error = ConfigurationError(f"store URL {redacted(url)!r}: {_url_error(exc)}")
            error.__suppress_context__ = True
            raise error from None
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            # a Cluster's nodes are asked for its slots now
            error = ConfigurationError(
                f"store URL {redacted(url)!r}: no node of the Redis Cluster answered "
                f"({type(exc).__name__}: {_scrub(str(exc), _secrets(url, {}))})")
            raise error from None
        return cls(client, url=url, max_connections=max_connections, **kwargs)

    def _connection_kwargs(self) -> Mapping[str, Any]:
        if self._cluster:
            return cast(RedisCluster, self.client).nodes_manager.connection_kwargs
        return cast(redis.Redis, self.client).connection_pool.connection_kwargs

    def __repr__(self) -> str:
        if self._cluster:
            nodes = ",".join(dict.fromkeys(
                f"{n.host}:{n.port}" for n in cast(RedisCluster, self.client).startup_nodes))
            text = f"RedisStore(cluster {nodes}, prefix={self.prefix!r})"
        else:
            kwargs = self._connection_kwargs()
            text = (f"RedisStore({kwargs.get('host', '?')}:{kwargs.get('port', '?')}/"
                    f"{kwargs.get('db', 0)}, prefix={self.prefix!r})")
        # In error messages and logs: a host read from a badly encoded password is not shown.
        return _scrub(text, self._secrets())

    # ------------------------------------------------------------------ keys
    def _base(self, scope: str) -> str:
        """The start of every key of ``scope``: the prefix, then the scope's hash tag, which
        puts each scope in a slot of its own."""
        return f"{self.prefix}:{{{_tag(scope)}}}:"

    def _scope_keys(self, scope: str, month: str, settled_month: str | None = None,
                    ) -> list[str]:
        """The 5 keys of ``scope`` the scripts take (lua/lib.lua): its state, pending
        expiries, ``month`` (a period budget's scope: its period, :func:`totals_key`), recent
        list, and the month of the reservation it settles."""
        base = self._base(scope)
        return [base + "w", base + "x", f"{base}m:{totals_key(scope, month)}", base + "r",
                f"{base}m:{totals_key(scope, settled_month or month)}"]

    def _groups(self, scopes: Sequence[str]) -> list[list[int]]:
        """The scopes one script may take at once, by index: on one Redis every scope of a
        call (one atomic step); on a Cluster one scope a script (each in its own slot)."""
        if not self._cluster:
            return [list(range(len(scopes)))]
        return [[i] for i in range(len(scopes))]

    @property
    def _workspaces_key(self) -> str:
        return f"{self.prefix}:workspaces"

    @property
    def _policy_keys(self) -> list[str]:
        """The policy table's version and the table, in one slot of their own."""
        base = f"{self.prefix}:{{control}}:policies"
        return [base + ":version", base]

    @property
    def _schema_key(self) -> str:
        return f"{self.prefix}:schema"

    def _claim_key(self, key: str) -> str:
        return f"{self.prefix}:claim:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")
                                                         ).hexdigest()

    @property
    def _server_time(self) -> str:
        return "1" if self.use_server_time else "0"

    # ------------------------------------------------------------------ calls
    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One call on the sync client: a script (concurrent ones share a round trip, see
        :class:`~quota_hooks.storage._batch.GroupCommit`) or a plain read."""
        if name == "settle":
            self._settled()
            return None
        try:
            if not self._schema_ok:
                self._check_schema()
            if name in self._shas:
                result = self._batch((name, keys, args))
            else:
                result = _command(self.client, name, keys, args)
        except (redis.RedisError, RedisClusterException) as exc:
            raise self._failure(name, exc) from self._cause(_as_redis_error(exc))
        self._unanswered_at = None
        return result

    def _failure(self, name: str, exc: BaseException) -> StorageError:
        """The StorageError of a failed call (raise it ``from self._cause(...)``); a timeout
        starts the quiet second of :meth:`_unanswered`."""
        error = _as_redis_error(exc)
        self._failed(error)
        failure = self._error(name, error)
        failure.__cause__ = self._cause(error)
        return failure

    def _runs(self, calls: Sequence[_Call]) -> list[_Run]:
        """The runs that send a batch of calls: the calls of one script (and, on a Cluster, of
        one slot) as one run of it (lua/lib.lua's ``each_call``: each scope is read once and
        written back once)."""
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (name, first_keys, _) in enumerate(calls):
            tag = first_keys[0].partition("{")[2].partition("}")[0] if self._cluster else ""
            groups.setdefault((name, tag), []).append(i)
        runs: list[_Run] = []
        for (name, _), members in groups.items():
            if name not in _BATCHED:
                runs += [(name, [i], list(calls[i][1]), list(calls[i][2])) for i in members]
                continue
            run_keys: list[str] = []
            run_args: list[Any] = [self._server_time]
            for i in members:
                _, call_keys, call_args = calls[i]
                run_keys += call_keys
                run_args += [len(call_keys), len(call_args), *call_args]
            runs.append((name, members, run_keys, run_args))
        return runs

    @staticmethod
    def _outcomes(runs: Sequence[_Run], replies: Sequence[Any], n: int) -> list[Any]:
        """Each call's result (or error) from the replies of its run."""
        outcomes: list[Any] = [None] * n
        for (name, members, _, _), reply in zip(runs, replies, strict=True):
            if isinstance(reply, BaseException) or name not in _BATCHED:
                for i in members:
                    outcomes[i] = reply
            else:
                for i, result in zip(members, reply, strict=True):
                    outcomes[i] = result
        return outcomes

    def _send(self, calls: Sequence[_Call]) -> list[Any]:
        """Send a batch of calls: one run alone, more in one pipeline (a Cluster's sends each
        node its part). A run that a node answers NOSCRIPT (it has not seen the script yet,
        or restarted) is sent again with the script's source, to that node alone."""
        runs = self._runs(calls)
        if len(runs) == 1:
            name, _, keys, args = runs[0]
            try:
                replies = [self.client.execute_command(  # type: ignore[no-untyped-call]
                    "EVALSHA", self._shas[name], len(keys), *keys, *args)]
            except redis.ResponseError as exc:  # a script's error is its callers' alone
                replies = [exc]
        else:
            replies = list(self._pipeline(self.client, runs))
        for i, (name, _, keys, args) in enumerate(runs):
            if isinstance(replies[i], redis.exceptions.NoScriptError):
                try:
                    replies[i] = self.client.eval(self._sources[name], len(keys), *keys, *args)
                except redis.ResponseError as exc:
                    replies[i] = exc
        return self._outcomes(runs, replies, len(calls))

    async def _asend(self, calls: Sequence[_Call]) -> list[Any]:
        """:meth:`_send` on this event loop's client."""
        client, _ = self._aclient()
        runs = self._runs(calls)
        if len(runs) == 1:
            name, _, keys, args = runs[0]
            try:
                replies = [await client.execute_command("EVALSHA", self._shas[name], len(keys),
                                                        *keys, *args)]
            except redis.ResponseError as exc:  # a script's error is its callers' alone
                replies = [exc]
        else:
            replies = list(await self._pipeline(client, runs))
        for i, (name, _, keys, args) in enumerate(runs):
            if isinstance(replies[i], redis.exceptions.NoScriptError):
                try:
                    replies[i] = await client.eval(self._sources[name], len(keys), *keys, *args)
                except redis.ResponseError as exc:
                    replies[i] = exc
        return self._outcomes(runs, replies, len(calls))

    def _pipeline(self, client: Any, runs: Sequence[_Run]) -> Any:
        """Send ``runs`` in one pipeline (a Cluster's takes EVALSHA only through
        execute_command); an error stands in place of the reply of a run that failed. On an
        async client, an awaitable."""
        pipe = client.pipeline(transaction=False)
        for name, _, keys, args in runs:
            pipe.execute_command("EVALSHA", self._shas[name], len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)

    def _check_schema(self) -> None:
        """Refuse a store of another key layout (see :data:`SCHEMA`); mark a new one."""
        value = self.client.get(self._schema_key)
        legacy = 0 if value is not None else self.client.exists(self._legacy_key)
        problem = self._schema_problem(value, legacy)
        if problem is not None:
            raise StorageError(problem)
        if value is None:
            self.client.set(self._schema_key, SCHEMA, nx=True)
        self._schema_ok = True

    async def _acheck_schema(self, client: Any) -> None:
        value = await client.get(self._schema_key)
        legacy = 0 if value is not None else await client.exists(self._legacy_key)
        problem = self._schema_problem(value, legacy)
        if problem is not None:
            raise StorageError(problem)
        if value is None:
            await client.set(self._schema_key, SCHEMA, nx=True)
        self._schema_ok = True

    @property
    def _legacy_key(self) -> str:
        return f"{{{self.prefix}}}:workspaces"

    def _schema_problem(self, value: bytes | str | None, legacy: int) -> str | None:
        """What is wrong with the layout found under the prefix, or None."""
        if value is None:
            if not legacy:
                return None
            return (f"{self!r}: the prefix {self.prefix!r} holds a store of quota-hooks' first "
                    f"key layout (keys '{{{self.prefix}}}:*', schema 1), which this version "
                    f"does not read (schema {SCHEMA}: a hash tag per scope, so that a Redis "
                    "Cluster spreads workspaces). Give this store another prefix "
                    "(RedisStore(prefix=...) or ?prefix= in the URL), or delete the old keys "
                    f"once their month is over (redis-cli --scan --pattern "
                    f"'{{{self.prefix}}}:*' | xargs redis-cli del)")
        if _text(value) != SCHEMA:
            return (f"{self!r}: the prefix {self.prefix!r} holds a store of schema "
                    f"{_text(value)!r} ({self._schema_key}); this version of quota-hooks "
                    f"reads schema {SCHEMA} only: upgrade it, or give this store another "
                    "prefix")
        return None

    def _error(self, what: str, exc: BaseException) -> StorageError:
        """The :class:`StorageError` of a failed Redis call: redis-py's text, with every
        piece of the URL's credentials in it (a host read from a badly encoded password,
        say) replaced by ``***`` (raise it ``from`` :meth:`_cause`)."""
        text = f"{self!r}: {what} failed: {exc}" if str(exc) else (
            f"{self!r}: {what} failed: {type(exc).__name__}")
        return StorageError(_scrub(text, self._secrets()))

    def _cause(self, exc: BaseException) -> BaseException | None:
        """``exc`` to chain to a :class:`StorageError`; when its own text holds a piece of the
        credentials (a traceback or an error reporter would show it), an error of its type
        with that text scrubbed: :meth:`commit` and :meth:`reserve` tell a connection failure
        by the type of the cause."""
        text = str(exc)
        clean = _scrub(text, self._secrets())
        if clean == text:
            return exc
        try:
            return type(exc)(clean)
        except Exception:
            return None

    def _secrets(self) -> tuple[str, ...]:
        return _secrets(self.url, self._connection_kwargs())

    def _failed(self, exc: redis.RedisError) -> None:
        if isinstance(exc, redis.TimeoutError):  # a refused connection fails fast anyway
            self._unanswered_at = time.monotonic()

    def _unanswered(self) -> bool:
        """True within a second of Redis leaving a call unanswered (a timeout): a commit
        then goes straight to the backlog instead of waiting out another timeout (a reserve
        still tries, so that limits are checked whenever Redis can check them)."""
        since = self._unanswered_at
        return since is not None and time.monotonic() - since < _QUIET_AFTER_FAILURE

    def _aclient(self) -> tuple[Any, AsyncGroupCommit[_Call]]:
        """This event loop's client and its batcher."""
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            found = self._async[loop] = (self._make_async_client(),
                                         AsyncGroupCommit(self._asend))
        return found

    def _make_async_client(self) -> Any:
        if self._cluster:
            from redis.asyncio.cluster import ClusterNode as AsyncNode
            from redis.asyncio.cluster import RedisCluster as AsyncCluster

            cluster = cast(RedisCluster, self.client)
            kwargs = {k: v for k, v in cluster.nodes_manager.connection_kwargs.items()
                      if k in _CLUSTER_OPTIONS}
            nodes = [AsyncNode(node.host, node.port) for node in cluster.startup_nodes]
            return AsyncCluster(startup_nodes=nodes, max_connections=self.max_connections,
                                **kwargs)
        # A blocking pool: a burst of tasks waits for a connection instead of failing.
        if self.url is not None:
            pool = aredis.BlockingConnectionPool.from_url(
                self.url, **_pool_options(self.max_connections, asyncio_=True)
            )
        else:
            kwargs = dict(self._connection_kwargs())
            kwargs.pop("connection_class", None)
            pool = aredis.BlockingConnectionPool(max_connections=self.max_connections, **kwargs)
        return aredis.Redis(connection_pool=pool)

    async def _arun(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if name == "settle":
            await anyio.to_thread.run_sync(self._settled)
            return None
        client, batch = self._aclient()
        try:
            if not self._schema_ok:
                await self._acheck_schema(client)
            if name in self._shas:
                result = await batch((name, keys, args))
            else:
                result = await _command(client, name, keys, args)
        except (redis.RedisError, RedisClusterException) as exc:
            error = _as_redis_error(exc)
            self._failed(error)
            raise self._error(name, error) from self._cause(error)
        self._unanswered_at = None
        return result

    # ------------------------------------------------------------------ plans
    # An operation is a plan: a generator that yields the calls it needs, one at a time, and
    # is sent each result (or thrown each StorageError). _drive runs a plan on the sync
    # client and _adrive on the async one: both faces share every rule.

    def _commit_plan(
        self, entry: UsageEntry, reservation: Reservation | None, commit_id: str,
        late: float = 0.0,
    ) -> _Plan[None]:
        """``late``: seconds since the commit was first tried (a replay from the backlog)."""
        record, delta = entry.record, entry.delta
        now = entry.now + late
        window = int(now // _DONE_WINDOW)
        age = entry.now - entry.when + late  # how long ago the call was, at the server's now
        numbers = _COMMIT_NUMBERS.pack(
            delta.requests, delta.tokens, delta.calls, delta.errors, delta.rate_limited,
            delta.cost_nanos, 0 if record.success else 1, record.total_tokens,
            record.input_tokens, record.output_tokens, int(entry.unpriced),
            delta.unpriced_nanos, self.recent_capacity, MAX_BREAKDOWN_NAMES,
            record.cached_input_tokens, record.cache_write_tokens, record.reasoning_tokens,
            float(age))
        rid, part = _settles(reservation)
        args = [repr(float(now)), entry.month, rid, numbers, record.model, record.api_method,
                encode(entry), entry.day_name, commit_id, "1" if late else "0", window, part]
        settled = reservation.month if reservation is not None else None
        scopes = entry.scopes
        for group in self._groups(scopes):
            keys: list[str] = []
            for index in group:
                keys += self._scope_keys(scopes[index], entry.month, settled)
            base = self._base(scopes[group[0]])
            keys += [f"{base}d:{window}", f"{base}d:{window - 1}"]
            if int((yield "commit", keys, args)) == 2:
                yield from self._register(scopes[group[0]])
        yield from self._register_held()

    def _reserve_plan(
        self, scopes: Sequence[str], delta: UsageDelta, limits: Mapping[str, Limits],
        now: float, month: str, ttl: float, rid: str, want: Sequence[int] = (0, 0, 0),
    ) -> _Plan[Reservation | Denial]:
        """Reserve ``delta`` (or, for a lease, up to ``want``: the returned reservation's
        ``delta`` is what Redis holds)."""
        if self._queue or self._processed < self._enqueued:
            # What this process committed counts before Redis checks a limit (a reservation's
            # hold covers only its estimate): the writer's queue lands first.
            yield "settle", (), ()
        held: list[list[int]] = []
        at = expires = now
        hold = delta
        for group in self._groups(scopes):
            keys: list[str] = []
            args: list[Any] = [repr(float(now)), month, rid, delta.requests, delta.tokens,
                               delta.cost_nanos, repr(float(ttl)), *want, _LEASE_SHARE]
            for index in group:
                keys += self._scope_keys(scopes[index], month)
                found = limits.get(scopes[index])
                if found is None:
                    args += ["0", "", "", "", "", ""]
                else:
                    args += ["1", *("" if v is None else v for v in (
                        found.rpm, found.tpm, found.rpd, found.tpd, found.budget_nanos))]
            try:
                result = yield "reserve", keys, args
            except StorageError:
                # On a Cluster, a later slot that failed: the earlier ones give their hold
                # back now (this one's, if it ran, goes back when Redis answers: _orphaned).
                for earlier in held:
                    with contextlib.suppress(StorageError):  # else the orphan's release does
                        yield from self._release_group(earlier, scopes, month, rid, now)
                raise
            if int(result[0]) != 1:
                _, which, limit, used, maximum, retry = (_text(v) for v in result)
                # On a Cluster, the scopes held before this one give their hold back.
                for earlier in held:
                    yield from self._release_group(earlier, scopes, month, rid, now)
                return Denial(scopes[group[int(which) - 1]], limit, int(used), int(maximum),
                              float(retry) if retry else None)
            if not held:
                expires, at = _TIMES.unpack(result[1])
                requests, tokens, nanos = _PART.unpack(result[3])
                hold = UsageDelta(requests=requests, tokens=tokens, cost_nanos=nanos)
            held.append(group)
            if int(result[2]) == 1:
                yield from self._register(scopes[group[0]])
        return Reservation(id=rid, scopes=tuple(scopes), delta=hold, at=at, month=month,
                           expires_at=expires)

    def _release_group(self, group: Sequence[int], scopes: Sequence[str], month: str,
                       rid: str, now: float, part: bytes | str = "") -> _Plan[bool]:
        keys: list[str] = []
        for index in group:
            keys += self._scope_keys(scopes[index], month, month)
        return bool((yield "release", keys, [repr(float(now)), rid, part]))

    def _release_plan(self, reservation: Reservation, now: float) -> _Plan[bool]:
        rid, part = _settles(reservation)
        found = False
        for group in self._groups(reservation.scopes):
            found |= yield from self._release_group(group, reservation.scopes,
                                                    reservation.month, rid, now, part)
        return found

    # ------------------------------------------------------------------ leases
    def _leased(self, scopes: Sequence[str], delta: UsageDelta, limits: Mapping[str, Limits],
                month: str) -> tuple[Reservation | None, _Lease | None, bool]:
        """A call's share of this process's lease on its scopes, if the lease has room for
        it; else None, the lease to give back (taken out of the table), and whether this
        call takes the next lease (one call at a time does: the others meanwhile reserve
        only what they need, so a burst does not take a lease a call)."""
        key = (tuple(scopes), month)
        with self._lease_lock:
            lease = self._leases.get(key)
            if lease is not None:
                left = lease.left
                if (time.monotonic() < lease.until
                        and lease.limits == _limits_of(scopes, limits)
                        and delta.requests <= left[0] and delta.tokens <= left[1]
                        and delta.cost_nanos <= left[2]):
                    left[0] -= delta.requests
                    left[1] -= delta.tokens
                    left[2] -= delta.cost_nanos
                    lease.calls += 1
                    return self._share(lease, delta), None, False
                del self._leases[key]
            if key in self._leasing:
                return None, lease, False
            self._leasing.add(key)
            return None, lease, True

    def _share(self, lease: _Lease, delta: UsageDelta) -> Reservation:
        """The reservation of a call's share of ``lease`` (settled at most once: see
        :meth:`_settle_once`). Call with the lease lock held."""
        share = Reservation(id=f"{lease.id}/{lease.calls}", scopes=lease.scopes, delta=delta,
                            at=lease.at, month=lease.month, expires_at=lease.expires_at)
        shares = self._shares
        shares[share.id] = lease
        if len(shares) > _MAX_SHARES:  # shares never settled (a caller that lost them)
            del shares[next(iter(shares))]
        return share

    def _settle_once(self, reservation: Reservation | None,
                     used: UsageDelta | None = None) -> Reservation | None:
        """``reservation``, or None when it is a lease's share that was settled already
        (a record and then a release of the same call): a share's part comes off the lease
        at most once, as a reservation's estimate does.

        A share whose call ``used`` more than its estimate takes the difference from what its
        lease has not handed out yet, and settles that much more of the lease's hold: the
        lease's room stays what the calls really used, so once it is used up the next call
        asks Redis, which counts it all.
        """
        if reservation is None or "/" not in reservation.id:
            return reservation
        with self._lease_lock:
            lease = self._shares.pop(reservation.id, None)
            if lease is None:
                return None
            if used is None:
                return reservation
            held, left = reservation.delta, lease.left
            more = [min(max(0, want - had), room) for want, had, room in (
                (used.requests, held.requests, left[0]), (used.tokens, held.tokens, left[1]),
                (used.cost_nanos, held.cost_nanos, left[2]))]
            if not any(more):
                return reservation
            for i, extra in enumerate(more):
                left[i] -= extra
            return dataclasses.replace(reservation, delta=UsageDelta(
                requests=held.requests + more[0], tokens=held.tokens + more[1],
                cost_nanos=held.cost_nanos + more[2]))

    def _lease_plan(self, scopes: Sequence[str], delta: UsageDelta,
                    limits: Mapping[str, Limits], now: float, month: str, ttl: float,
                    rid: str, spent: _Lease | None) -> _Plan[Reservation | Denial]:
        """Give back what ``spent`` did not hand out, then lease up to :attr:`lease_calls`
        calls like this one (less near a limit) and hand this call its share."""
        key = (tuple(scopes), month)
        try:
            if spent is not None:
                yield from self._give_back(spent)
            calls = self.lease_calls
            want = (delta.requests * calls, delta.tokens * calls, delta.cost_nanos * calls)
            result = yield from self._reserve_plan(scopes, delta, limits, now, month,
                                                   ttl + self.lease_seconds, rid, want)
        finally:
            with self._lease_lock:
                self._lease_finished(key)
        if not isinstance(result, Reservation):
            return result
        hold = result.delta
        left = [hold.requests - delta.requests, hold.tokens - delta.tokens,
                hold.cost_nanos - delta.cost_nanos]
        lease = _Lease(rid, tuple(scopes), month, _limits_of(scopes, limits), result.at,
                       result.expires_at, left, time.monotonic() + self.lease_seconds)
        with self._lease_lock:
            if any(left):
                displaced = self._leases.get(key)
                self._leases[key] = lease
                if displaced is not None:  # given back at the next call
                    self._retired.append(displaced)
            return self._share(lease, delta)

    def _give_back(self, lease: _Lease) -> _Plan[None]:
        """Release what a lease did not hand out (its calls' shares stay held until they
        settle)."""
        with self._lease_lock:  # what goes back is no longer there for a late share's excess
            unused, lease.left = lease.left, [0, 0, 0]
        if not any(unused):
            return
        now = lease.at + (time.monotonic() - lease.until + self.lease_seconds)
        part = _PART.pack(*unused)
        try:
            for group in self._groups(lease.scopes):
                yield from self._release_group(group, lease.scopes, lease.month, lease.id,
                                               now, part)
        except StorageError:  # held until the lease expires in Redis, as a crash would
            logger.warning("quota-hooks: %r could not give back a lease's unused part", self)

    def _spent_leases(self, everything: bool = False) -> list[_Lease]:
        """Take the leases past their time (or all of them) out of the table."""
        now = time.monotonic()
        with self._lease_lock:
            gone = [key for key, lease in self._leases.items()
                    if everything or lease.until <= now]
            spent = [self._leases.pop(key) for key in gone] + self._retired
            self._retired = []
            return spent

    def _give_back_plan(self, leases: Sequence[_Lease]) -> _Plan[None]:
        for lease in leases:
            yield from self._give_back(lease)

    def _sweep_due(self) -> list[_Lease]:
        """The leases past their time, at most once per ``lease_seconds``: a process that
        stops calling gives back what it leased at its next call or at close."""
        if not self._retired and (not self._leases or time.monotonic() < self._next_sweep):
            return []
        self._next_sweep = time.monotonic() + self.lease_seconds
        return self._spent_leases()

    def _reserve_or_lease(self, scopes: Sequence[str], delta: UsageDelta,
                          limits: Mapping[str, Limits], now: float, month: str, ttl: float,
                          rid: str, patient: bool = False,
                          ) -> Reservation | _Plan[Reservation | Denial] | None:
        """A call's share of a lease (no round trip), or the plan that reserves it; None
        (when ``patient``) while another call of this process is taking the lease: wait for
        it (:meth:`_lease_taken`) and ask again."""
        if self.lease_calls > 1 and len(self._groups(scopes)) == 1:
            share, spent, lead = self._leased(scopes, delta, limits, month)
            if share is not None:
                return share
            if lead:
                return self._lease_plan(scopes, delta, limits, now, month, ttl, rid, spent)
            if spent is not None:
                with self._lease_lock:
                    self._retired.append(spent)
            if patient:
                return None
        return self._reserve_plan(scopes, delta, limits, now, month, ttl, rid)

    def _lease_event(self, scopes: Sequence[str], month: str) -> asyncio.Event | None:
        """An event of this loop set when no call of this process is taking a lease on
        ``scopes`` any more (whichever thread or loop took it); None if none is."""
        key = (tuple(scopes), month)
        with self._lease_lock:
            if key not in self._leasing:
                return None
            event = asyncio.Event()
            self._lease_waiters.setdefault(key, []).append((asyncio.get_running_loop(), event))
            return event

    def _lease_finished(self, key: tuple[tuple[str, ...], str]) -> None:
        """The lease on ``key`` is taken (or failed): wake its waiters. Call with the lease
        lock held."""
        self._leasing.discard(key)
        self._lease_done.notify_all()
        for loop, event in self._lease_waiters.pop(key, ()):
            with contextlib.suppress(RuntimeError):  # a loop that has closed meanwhile
                loop.call_soon_threadsafe(event.set)

    def _lease_taken(self, scopes: Sequence[str], month: str, timeout: float = 1.0) -> None:
        """Wait (at most ``timeout``) until no call of this process is taking a lease on
        ``scopes``."""
        key = (tuple(scopes), month)
        with self._lease_done:
            self._lease_done.wait_for(lambda: key not in self._leasing, timeout)

    def _register(self, scope: str) -> _Plan[None]:
        """Add a workspace to the set ``workspaces()`` reads (once a month per workspace,
        when a script says it is new): a failure keeps it for the next call."""
        if scope.startswith("workspace:"):
            self._unregistered.add(scope[len("workspace:"):])
        yield from self._register_held()

    def _register_held(self) -> _Plan[None]:
        if not self._unregistered:
            return
        names = list(self._unregistered)
        try:
            yield "register", [self._workspaces_key], names
        except StorageError:
            return
        self._unregistered.difference_update(names)

    def _drive(self, plan: _Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                try:
                    result = self._run(*step)
                except StorageError as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(result)
        except StopIteration as stop:
            return cast(T, stop.value)
        finally:
            plan.close()  # an interrupted plan runs its cleanup (a lease being taken, say)

    async def _adrive(self, plan: _Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                try:
                    result = await self._arun(*step)
                except StorageError as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(result)
        except StopIteration as stop:
            return cast(T, stop.value)
        finally:
            plan.close()  # a cancelled plan runs its cleanup too

    @staticmethod
    def _counters(values: Any) -> Counters:
        m_r, m_t, m_c, m_e, m_l = _COUNTS.unpack(values[0])
        d_r, d_t, _, _, _ = _COUNTS.unpack(values[1])
        nanos, u_calls, u_nanos = (int(_text(v)) for v in values[2:5])
        return Counters(requests_minute=m_r, tokens_minute=m_t, requests_day=d_r,
                        tokens_day=d_t, cost_month_nanos=nanos, calls_minute=m_c,
                        errors_minute=m_e, rate_limited_minute=m_l,
                        unpriced_month_calls=u_calls, unpriced_month_nanos=u_nanos,
                        budget_reset_at=float(_text(values[5])) if len(values) > 5 else 0.0)

    @staticmethod
    def _aggregates(raw: Mapping[Any, Any], by: Breakdown) -> dict[str, Aggregate]:
        """The ``by`` rows of a month's hash (``m:<model>``, ``a:<method>``, ``d:<day>``,
        each packed: requests, errors, tokens, input, output, cost, unpriced, unpriced_nanos,
        cached input, cache-write and reasoning tokens, little-endian 64-bit; a row of the
        first 8 only was written by an older version)."""
        mark = _BREAKDOWN_MARK[by]
        table: dict[str, Aggregate] = {}
        for field, value in raw.items():
            name = _name(field)
            if name.startswith(mark):
                packed = _AGGREGATE if len(value) == _AGGREGATE.size else _AGGREGATE_8
                table[name[len(mark):]] = Aggregate(*packed.unpack(value))
        return table

    def _after_fork_in_child(self) -> None:
        """A child process after ``fork()``: new locks, and nothing of what the parent still
        owns: its leases (spending them here too would admit their calls twice), its queued
        commits, backlog and orphaned holds (the parent writes and settles those). redis-py
        opens the child's own connections."""
        self._batch = GroupCommit(self._send)
        self._leases, self._retired, self._leasing = {}, [], set()
        self._lease_waiters, self._shares = {}, {}
        self._lease_lock = threading.Lock()
        self._lease_done = threading.Condition(self._lease_lock)
        self._queue = deque()
        self._queue_ready = threading.Condition()
        self._enqueued = self._processed = 0
        self._writer = None  # started by the child's first batched commit
        self._backlog = deque()
        self._backlog_lock = threading.Lock()
        self._orphans = deque()
        self._unanswered_at = None
        self._async = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ batched commits
    def _enqueue(self, entry: UsageEntry, reservation: Reservation | None) -> None:
        """``durability="batched"``: hand a commit to the writer thread."""
        commit_id = uuid.uuid4().hex[:20]
        with self._queue_ready:
            if len(self._queue) >= self._backlog_size:
                self.dropped_records += 1
                if self.dropped_records == 1:
                    logger.error("quota-hooks: %r: the queue of %d commits is full; more are "
                                 "dropped and counted in dropped_records", self,
                                 self._backlog_size)
                return
            self._queue.append((entry, reservation, commit_id))
            self._enqueued += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                                 name="quota-hooks-redis-writer")
                self._writer.start()
            self._queue_ready.notify()

    def _write_loop(self) -> None:
        while True:
            with self._queue_ready:
                while not self._queue and not self._stopping:
                    self._queue_ready.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), 256))]
            try:
                self._commit_many(batch)
            except Exception:  # pragma: no cover - a bug; never kill the writer
                logger.exception("quota-hooks: %r: the writer failed on a batch", self)
            with self._queue_ready:
                self._processed += len(batch)
                self._queue_ready.notify_all()

    def _commit_many(self, batch: Sequence[tuple[UsageEntry, Reservation | None, str]]) -> None:
        """Commit a batch: every commit's plan is driven in step with the others, each step's
        calls sent together (one run of the commit script for them all)."""
        if self._unanswered():
            for held in batch:
                self._keep(*held)
            return
        plans = {i: self._commit_plan(entry, reservation, commit_id)
                 for i, (entry, reservation, commit_id) in enumerate(batch)}
        steps = {i: next(plan) for i, plan in plans.items()}
        while steps:
            order = list(steps)
            calls = [steps[i] for i in order]
            outcomes = self._send_mixed(calls)
            answered = False
            for i, call, outcome in zip(order, calls, outcomes, strict=True):
                try:
                    if isinstance(outcome, BaseException):
                        steps[i] = plans[i].throw(self._failure(call[0], outcome))
                    else:
                        answered = True
                        steps[i] = plans[i].send(outcome)
                except StopIteration:
                    del steps[i]
                except StorageError as exc:
                    del steps[i]
                    if _held(exc):
                        self._keep(*batch[i])
                    else:
                        self.dropped_records += 1
                        logger.error("quota-hooks: a commit was dropped: %s", exc)
            if answered:
                self._unanswered_at = None
        if self._replay_due():
            self._replay()

    def _send_mixed(self, calls: Sequence[_Call]) -> list[Any]:
        """Each call's result or error: the scripts' sent together, the plain commands (a
        workspace's registration) one by one."""
        outcomes: list[Any] = [None] * len(calls)
        scripts = [i for i, call in enumerate(calls) if call[0] in self._shas]
        try:
            if not self._schema_ok:
                self._check_schema()
            sent = self._send([calls[i] for i in scripts]) if scripts else []
        except (redis.RedisError, RedisClusterException) as exc:
            sent = [exc] * len(scripts)
        for i, outcome in zip(scripts, sent, strict=True):
            outcomes[i] = outcome
        for i, (name, keys, args) in enumerate(calls):
            if name not in self._shas:
                try:
                    outcomes[i] = _command(self.client, name, keys, args)
                except (redis.RedisError, RedisClusterException) as exc:
                    outcomes[i] = exc
        return outcomes

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every commit handed to the writer before this call is in Redis (or held
        for replay, or dropped). Returns False on timeout. Immediate with
        ``durability="sync"``."""
        if self._writer is None:
            return True
        with self._queue_ready:
            target = self._enqueued
            return self._queue_ready.wait_for(lambda: self._processed >= target, timeout)

    def _stop_writer(self, deadline: float) -> None:
        """Let the writer finish what is queued (until ``deadline``), then stop it."""
        writer = self._writer
        if writer is None:
            return
        self.flush(max(0.0, deadline - time.monotonic()))
        with self._queue_ready:
            self._stopping = True
            left = len(self._queue)
            self._queue.clear()
            self._processed += left  # dropped (counted below): flush() has nothing to wait for
            self._queue_ready.notify_all()
        writer.join(max(0.0, deadline - time.monotonic()))
        if left:
            self.dropped_records += left
            logger.error("quota-hooks: %r closed with %d queued commit(s) not written; they "
                         "are lost", self, left)

    def _settled(self) -> None:
        """Reads, and reserves that ask Redis, see this process's commits: they wait for the
        writer (a batch, a few milliseconds)."""
        if (self._queue or self._processed < self._enqueued) and not self._unanswered():
            self.flush(self._read_wait)  # not while Redis leaves calls unanswered

    # ------------------------------------------------------------------ Store: sync
    def commit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        reservation = self._settle_once(reservation, entry.delta)
        if self.durability == "batched" and not self._stopping:
            self._enqueue(entry, reservation)
            return
        self._drive(self._commit_or_keep(entry, reservation))

    def _keep(self, entry: UsageEntry, reservation: Reservation | None, commit_id: str) -> None:
        """Hold a commit that Redis did not take, for :meth:`_replay`."""
        with self._backlog_lock:
            if len(self._backlog) >= self._backlog_size:
                self.dropped_records += 1
                dropped = True
            else:
                self._backlog.append((entry, reservation, commit_id, time.monotonic()))
                dropped = False
        if dropped and self.dropped_records == 1:
            logger.error("quota-hooks: %r: Redis is not answering and the backlog of %d "
                         "commits is full; more are dropped and counted in dropped_records",
                         self, self._backlog_size)

    def _take_backlog(self, limit: int = 100) -> list[tuple[UsageEntry, Reservation | None,
                                                            str, float]]:
        with self._backlog_lock:
            return [self._backlog.popleft() for _ in range(min(limit, len(self._backlog)))]

    def _commit_or_keep(self, entry: UsageEntry, reservation: Reservation | None,
                        ) -> _Plan[None]:
        """A commit, held for replay if Redis does not answer (straight to the backlog within
        a second of a timeout), then what waits for replay."""
        commit_id = uuid.uuid4().hex[:20]
        if self._unanswered():
            self._keep(entry, reservation, commit_id)
            return
        try:
            yield from self._commit_plan(entry, reservation, commit_id)
        except StorageError as exc:
            if not _held(exc):
                self.dropped_records += 1  # counted and shown (health), never lost silently
                logger.error("quota-hooks: a commit was dropped: %s", exc)
                raise
            self._keep(entry, reservation, commit_id)
            return
        yield from self._housekeeping()

    def _housekeeping(self) -> _Plan[None]:
        """After a call Redis answered: replay what waits (if due), give back spent leases."""
        if self._replay_due():
            yield from self._replay_plan()
        due = self._sweep_due()
        if due:
            yield from self._give_back_plan(due)

    def _replay_plan(self) -> _Plan[None]:
        """Replay held commits (a hundred per successful call) now that Redis answers, and
        give back the holds of reserves that timed out."""
        while self._orphans:
            with self._backlog_lock:
                if not self._orphans:
                    break
                orphan, since = self._orphans.popleft()
            try:
                yield from self._release_plan(orphan, orphan.at + (time.monotonic() - since))
            except StorageError:
                with self._backlog_lock:
                    self._orphans.appendleft((orphan, since))
                self._replay_after = time.monotonic() + _QUIET_AFTER_FAILURE
                return
        taken = self._take_backlog()
        for i, (entry, reservation, commit_id, since) in enumerate(taken):
            late = max(time.monotonic() - since, 1e-6)
            try:
                yield from self._commit_plan(entry, reservation, commit_id, late)
            except StorageError as exc:
                if not _held(exc):  # it can never be written: the rest can
                    self.dropped_records += 1
                    logger.error("quota-hooks: a held commit was dropped: %s", exc)
                    continue
                with self._backlog_lock:  # this one and the rest go back, in their order
                    self._backlog.extendleft(reversed(taken[i:]))
                self._replay_after = time.monotonic() + _QUIET_AFTER_FAILURE
                return
            except BaseException:  # interrupted: nothing taken is lost either
                with self._backlog_lock:
                    self._backlog.extendleft(reversed(taken[i:]))
                raise

    def _replay_due(self) -> bool:
        """Something waits for replay, and the last replay did not fail within the second
        (a node that hangs would otherwise cost every call that reaches a live one a timeout:
        on a Cluster, a call that succeeds does not mean every node answers)."""
        return bool(self._backlog or self._orphans) and (
            time.monotonic() >= self._replay_after)

    def _replay(self) -> None:
        self._drive(self._replay_plan())

    def health(self) -> str | None:
        """None while every commit reaches Redis; else how many wait in the backlog or were
        dropped (the manager shows ``degraded``)."""
        if self._backlog:
            return f"Redis did not answer: {len(self._backlog)} commit(s) held for replay"
        if self.dropped_records:
            return f"Redis did not answer: {self.dropped_records} commit(s) dropped"
        return None

    def reserve(
        self,
        scopes: Sequence[str],
        delta: UsageDelta,
        limits: Mapping[str, Limits],
        now: float,
        month: str,
        ttl: float,
    ) -> Reservation | Denial:
        rid = uuid.uuid4().hex[:20]
        plan = self._reserve_or_lease(scopes, delta, limits, now, month, ttl, rid, patient=True)
        if plan is None:  # another thread is taking the lease: a share of it, most likely
            self._lease_taken(scopes, month)
            plan = self._reserve_or_lease(scopes, delta, limits, now, month, ttl, rid)
        if isinstance(plan, Reservation):
            return plan
        assert plan is not None
        try:
            result = self._drive(plan)
        except StorageError as exc:
            self._orphaned(exc, rid, scopes, month, now)
            raise
        self._drive(self._housekeeping())
        return result

    def _orphaned(self, exc: StorageError, rid: str, scopes: Sequence[str], month: str,
                  now: float) -> None:
        """A reserve whose reply never came may still run (Redis reads what was sent once it
        answers again): its hold is given back then, so the call (let through or refused
        without it) is not counted twice."""
        if isinstance(exc.__cause__, _UNANSWERED):
            self._orphan(rid, scopes, month, now)

    def _orphan(self, rid: str, scopes: Sequence[str], month: str, now: float) -> None:
        with self._backlog_lock:
            if len(self._orphans) < self._backlog_size:
                self._orphans.append((Reservation(rid, tuple(scopes), UsageDelta(), now,
                                                  month, now), time.monotonic()))
                return
        logger.error("quota-hooks: %r: %d reserves wait for their hold to be given back; "
                     "this one's stays held until it expires", self, self._backlog_size)

    def release(self, reservation: Reservation, now: float) -> bool:
        if self._settle_once(reservation) is None:
            return False
        return self._drive(self._release_plan(reservation, now))

    def claim(self, key: str, now: float, ttl: float) -> bool:
        return bool(self._run("claim", [self._claim_key(key)],
                              [repr(float(now)), self._server_time, repr(ttl)]))

    def counters(self, scope: str, now: float, month: str) -> Counters:
        self._settled()
        keys = self._scope_keys(scope, month)
        return self._counters(self._run("counters", keys, [repr(float(now))]))

    def breakdown(self, scope: str, month: str, by: Breakdown) -> dict[str, Aggregate]:
        self._settled()
        return self._aggregates(self._run("hgetall", [self._scope_keys(scope, month)[2]], ()),
                                by)

    def recent(self, scope: str, n: int) -> list[UsageRecord]:
        self._settled()
        n = min(n, self.recent_capacity)
        if n <= 0:
            return []
        rows = self._run("lrange", [self._base(scope) + "r"], (0, n - 1))
        return [decode(row) for row in rows]

    def workspaces(self) -> list[str]:
        self._settled()
        return sorted(_name(m) for m in self._run("smembers", [self._workspaces_key], ()))

    # ------------------------------------------------------------------ control plane
    def policies(self, known: int = -1) -> PolicyTable | None:
        return self._policy_table(self._run("policies", self._policy_keys, (str(known),)), known)

    def put_policies(self, changes: Mapping[str, str | None], now: float, *,
                     only_if_new: bool = False, expect_version: int | None = None) -> int | None:
        found = self._run("put_policies", self._policy_keys,
                          self._put_args(changes, now, only_if_new, expect_version))
        return None if found is None else int(found)

    def append_alert(self, scope: str, document: str, now: float, keep: int) -> None:
        self._run("append_alert", [self._base(scope) + "h"], (document, str(max(1, keep))))

    def alert_history(self, scope: str, n: int) -> list[str]:
        if n <= 0:
            return []
        return [_text(row) for row in self._run("lrange", [self._base(scope) + "h"], (0, n - 1))]

    def reset_budget(self, scope: str, month: str, now: float) -> int | None:
        self._settled()
        found = self._run("reset_budget", self._scope_keys(scope, month), (repr(float(now)),))
        return None if found is None else int(found)

    @staticmethod
    def _put_args(changes: Mapping[str, str | None], now: float, only_if_new: bool,
                  expect_version: int | None) -> list[str]:
        args = [repr(float(now)), "1" if only_if_new else "0",
                "" if expect_version is None else str(expect_version)]
        for key, document in changes.items():
            args += [key, document or ""]
        return args

    @staticmethod
    def _policy_table(reply: Sequence[Any], known: int) -> PolicyTable | None:
        version = int(reply[0])
        if version == known or len(reply) < 2:
            return None
        flat = reply[1]
        policies = {}
        for key, value in zip(flat[::2], flat[1::2], strict=True):
            written, at, document = _text(value).split(" ", 2)
            policies[_text(key)] = StoredPolicy(document, int(written), float(at))
        return PolicyTable(version, policies)

    def clear(self) -> int:
        """Delete every key of this store's prefix (for tests); returns how many."""
        removed = 0
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + ":*"
        for key in self.client.scan_iter(match=pattern, count=1000):
            removed += int(self.client.delete(key))
        self._schema_ok = False
        return removed

    def close(self, timeout: float | None = None) -> None:
        """Replay what the backlog holds (within ``timeout``), then close the client."""
        if self._closed:
            return
        self._closed = True
        if self._leases or self._retired:  # a failure is logged (held until Redis expires it)
            self._drive(self._give_back_plan(self._spent_leases(everything=True)))
        deadline = time.monotonic() + (5.0 if timeout is None else timeout)
        self._stop_writer(deadline)
        while (self._backlog or self._orphans) and time.monotonic() < deadline:
            held = len(self._backlog) + len(self._orphans)
            self._replay()
            if len(self._backlog) + len(self._orphans) >= held:
                break  # Redis still does not answer
        self._count_lost()
        self.client.close()

    def _count_lost(self) -> None:
        """At close: what the backlog still holds is lost (logged and counted)."""
        if self._backlog:
            logger.error("quota-hooks: %r closed with %d commit(s) Redis never took; they "
                         "are lost", self, len(self._backlog))
            self.dropped_records += len(self._backlog)
            self._backlog.clear()

    # ------------------------------------------------------------------ Store: async
    async def acommit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        reservation = self._settle_once(reservation, entry.delta)
        if self.durability == "batched" and not self._stopping:
            self._enqueue(entry, reservation)
            return
        await self._adrive(self._commit_or_keep(entry, reservation))

    async def areserve(
        self,
        scopes: Sequence[str],
        delta: UsageDelta,
        limits: Mapping[str, Limits],
        now: float,
        month: str,
        ttl: float,
    ) -> Reservation | Denial:
        rid = uuid.uuid4().hex[:20]
        plan = self._reserve_or_lease(scopes, delta, limits, now, month, ttl, rid, patient=True)
        if plan is None:  # another task is taking the lease: a share of it, most likely
            taken = self._lease_event(scopes, month)
            if taken is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(taken.wait(), 1.0)
            plan = self._reserve_or_lease(scopes, delta, limits, now, month, ttl, rid)
        if isinstance(plan, Reservation):
            return plan
        assert plan is not None
        try:
            result = await self._adrive(plan)
        except StorageError as exc:
            self._orphaned(exc, rid, scopes, month, now)
            raise
        except asyncio.CancelledError:
            # Its reserve may have run (it was sent): the hold goes back once Redis answers
            # the next call, as a reserve whose reply timed out does.
            self._orphan(rid, scopes, month, now)
            raise
        await self._adrive(self._housekeeping())
        return result

    async def arelease(self, reservation: Reservation, now: float) -> bool:
        if self._settle_once(reservation) is None:
            return False
        return await self._adrive(self._release_plan(reservation, now))

    async def aclaim(self, key: str, now: float, ttl: float) -> bool:
        return bool(await self._arun("claim", [self._claim_key(key)],
                                     [repr(float(now)), self._server_time, repr(ttl)]))

    async def acounters(self, scope: str, now: float, month: str) -> Counters:
        if self._queue or self._processed < self._enqueued:
            await anyio.to_thread.run_sync(self._settled)
        keys = self._scope_keys(scope, month)
        return self._counters(await self._arun("counters", keys, [repr(float(now))]))

    async def abreakdown(self, scope: str, month: str, by: Breakdown) -> dict[str, Aggregate]:
        if self._queue or self._processed < self._enqueued:
            await anyio.to_thread.run_sync(self._settled)
        raw = await self._arun("hgetall", [self._scope_keys(scope, month)[2]], ())
        return self._aggregates(raw, by)

    async def arecent(self, scope: str, n: int) -> list[UsageRecord]:
        if self._queue or self._processed < self._enqueued:
            await anyio.to_thread.run_sync(self._settled)
        n = min(n, self.recent_capacity)
        if n <= 0:
            return []
        rows = await self._arun("lrange", [self._base(scope) + "r"], (0, n - 1))
        return [decode(row) for row in rows]

    async def aworkspaces(self) -> list[str]:
        if self._queue or self._processed < self._enqueued:
            await anyio.to_thread.run_sync(self._settled)
        members = await self._arun("smembers", [self._workspaces_key], ())
        return sorted(_name(m) for m in members)

    async def apolicies(self, known: int = -1) -> PolicyTable | None:
        return self._policy_table(
            await self._arun("policies", self._policy_keys, (str(known),)), known)

    async def aput_policies(self, changes: Mapping[str, str | None], now: float, *,
                            only_if_new: bool = False,
                            expect_version: int | None = None) -> int | None:
        found = await self._arun("put_policies", self._policy_keys,
                                 self._put_args(changes, now, only_if_new, expect_version))
        return None if found is None else int(found)

    async def aappend_alert(self, scope: str, document: str, now: float, keep: int) -> None:
        await self._arun("append_alert", [self._base(scope) + "h"],
                         (document, str(max(1, keep))))

    async def aalert_history(self, scope: str, n: int) -> list[str]:
        if n <= 0:
            return []
        rows = await self._arun("lrange", [self._base(scope) + "h"], (0, n - 1))
        return [_text(row) for row in rows]

    async def areset_budget(self, scope: str, month: str, now: float) -> int | None:
        if self._queue or self._processed < self._enqueued:
            await anyio.to_thread.run_sync(self._settled)
        found = await self._arun("reset_budget", self._scope_keys(scope, month),
                                 (repr(float(now)),))
        return None if found is None else int(found)

    async def aclose(self) -> None:
        """:meth:`close`: what the writer queued, the leases' unused parts and the backlog go
        to Redis first (within 5 s)."""
        if self._closed:
            return
        deadline = time.monotonic() + 5.0
        if self._writer is not None:
            await anyio.to_thread.run_sync(self._stop_writer, deadline)
        if self._leases or self._retired:  # a failure is logged (held until Redis expires it)
            await self._adrive(self._give_back_plan(self._spent_leases(everything=True)))
        while (self._backlog or self._orphans) and time.monotonic() < deadline:
            held = len(self._backlog) + len(self._orphans)
            await self._adrive(self._replay_plan())
            if len(self._backlog) + len(self._orphans) >= held:
                break  # Redis still does not answer
        self._count_lost()
        self._closed = True
        loop = asyncio.get_running_loop()
        found = self._async.pop(loop, None)
        if found is not None:
            await found[0].aclose()
        self.client.close()
