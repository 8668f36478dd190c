"""`RedisStore`: usage in Redis, shared exactly by every process on every host.

* Every write and every limit check is one Lua script (``quota_hooks/storage/lua/``, shipped as
  package files): a reservation checks every limit of every scope and holds the usage
  atomically, and a settle undoes its estimate exactly once.
* Time: by default the scripts read the server's ``TIME``, so client clock skew does not move a
  window (``use_server_time=False`` uses the ``now`` that the manager passes, for tests with
  an injected clock). The budget month is the caller's (it depends on the policy's zone).
* Keys: ``{prefix}:s:<sha256 of the scope>:...``. Tenant ids never appear in key names, so
  no id can collide with another or inject into a key; they are stored as values only. Every
  key carries the one hash tag ``{prefix}``, so on Redis Cluster all of them live in one slot
  and multi-scope scripts stay atomic (the price: one store does not shard across a cluster).
* Every key has a TTL: window keys a little over their window, the rest 400 days.
* History: a capped list of recent records per scope (``recent_capacity``), and per-month
  hashes for the breakdowns.

Sync methods use ``redis.Redis``; async ones ``redis.asyncio.Redis``, one client per event
loop. Redis errors become :class:`~quota_hooks.errors.StorageError`.

A Redis that hangs (SIGSTOPped, a partition) never holds a call for long: connecting and each
reply are bounded (``socket_connect_timeout``, 1 s, and ``socket_timeout``, 0.5 s by default),
and so is the wait for a free pooled connection in a burst (``timeout``, 1 s); each is
settable in the URL (``redis://host/0?socket_timeout=1``; raise it for a process that runs
thousands of concurrent calls on one event loop, where a reply can wait that long for its
turn). A timeout is not retried; a dropped connection is retried once. A timeout is a store
failure like any other: ``fail_open`` or ``fail_closed`` applies.

Nothing recorded is lost to an outage: a commit that fails is kept in a bounded backlog
(``backlog_size``) and replayed once Redis answers again. Each commit carries an id that the
script remembers for a day, so a commit that Redis ran after its reply timed out is never
counted twice. Records beyond the backlog are dropped, logged and counted in
``dropped_records``; :meth:`RedisStore.health` says so meanwhile (the status: ``degraded``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any
from urllib.parse import unquote

try:
    import redis
    import redis.asyncio as aredis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("RedisStore needs redis-py: pip install 'quota-hooks[redis]'") from exc

from .._exit import close_at_exit
from ..errors import ConfigurationError, StorageError
from ..usage import UsageRecord
from ._rows import decode, encode
from .base import (
    MAX_BREAKDOWN_NAMES,
    Aggregate,
    Breakdown,
    Counters,
    Denial,
    Limits,
    Reservation,
    UsageDelta,
    UsageEntry,
)

__all__ = ["CONNECT_TIMEOUT", "DEFAULT_TIMEOUT", "POOL_TIMEOUT", "RedisStore"]

logger = logging.getLogger("quota_hooks")

_SCRIPTS = ("commit", "reserve", "release", "counters", "claim")
_PARTS = ("m:tot", "m:b", "m:ids", "d:tot", "d:b", "d:ids", "months", "bd:model", "bd:method",
          "recent", "pend", "pexp", "bd:day")
_BREAKDOWN_KEY = {"model": 7, "api_method": 8, "day": 12}
_AGGREGATE_FIELDS = 8


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


def _redacted(url: str) -> str:
    from . import redacted

    return redacted(url)


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
        prefix: namespace of every key (also the Cluster hash tag).
        recent_capacity: records kept per scope for ``recent()``.
        use_server_time: read the clock from Redis ``TIME`` (default) or trust ``now``.
        max_connections: the size of each async client's connection pool.
        backlog_size: commits kept while Redis does not answer, replayed when it does.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        url: str | None = None,
        prefix: str = "quota-hooks",
        recent_capacity: int = 1000,
        use_server_time: bool = True,
        max_connections: int = 50,
        backlog_size: int = 10_000,
    ) -> None:
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
        self._tag = "{" + prefix + "}"
        self._sources = {name: _source(name) for name in _SCRIPTS}
        self._scripts = {name: client.register_script(src) for name, src in self._sources.items()}
        self._backlog: deque[tuple[UsageEntry, Reservation | None, str, float]] = deque()
        self._backlog_size = backlog_size
        self._backlog_lock = threading.Lock()
        self._orphans: deque[tuple[Reservation, float]] = deque()
        self._unanswered_at: float | None = None
        self._closed = False
        close_at_exit(self, 2)  # a plain exit still replays what the backlog holds
        self.dropped_records = 0
        """Commits lost because the backlog was full while Redis did not answer (logged)."""
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[aredis.Redis, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 50, **kwargs: Any) -> RedisStore:
        """A store on ``redis://host:port/db`` (``rediss://`` for TLS), with pools of at most
        ``max_connections`` connections that make callers wait, briefly, rather than fail.

        The URL's query sets redis-py's connection options, e.g.
        ``?socket_timeout=0.5&socket_connect_timeout=1&timeout=1``; unset, they are
        :data:`DEFAULT_TIMEOUT`, :data:`CONNECT_TIMEOUT` and :data:`POOL_TIMEOUT`.
        """
        try:
            pool = redis.BlockingConnectionPool.from_url(url, **_pool_options(max_connections))
            client = redis.Redis(connection_pool=pool)
        except (ValueError, TypeError) as exc:
            # redis-py's own text can quote part of the URL (a password with an unencoded
            # "#" is read as the port): only its fixed messages are shown.
            error = ConfigurationError(f"store URL {_redacted(url)!r}: {_url_error(exc)}")
            error.__suppress_context__ = True
            raise error from None
        return cls(client, url=url, max_connections=max_connections, **kwargs)

    def __repr__(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        text = (f"RedisStore({kwargs.get('host', '?')}:{kwargs.get('port', '?')}/"
                f"{kwargs.get('db', 0)}, prefix={self.prefix!r})")
        # In error messages and logs: a host read from a badly encoded password is not shown.
        return _scrub(text, self._secrets())

    # ------------------------------------------------------------------ keys
    def _scope_keys(self, scope: str) -> list[str]:
        digest = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()
        base = f"{self._tag}:s:{digest}:"
        return [base + part for part in _PARTS]

    def _month_keys(self, scope: str, month: str) -> list[str]:
        keys = self._scope_keys(scope)
        for index in _BREAKDOWN_KEY.values():
            keys[index] += ":" + month
        return keys

    @property
    def _workspaces_key(self) -> str:
        return f"{self._tag}:workspaces"

    def _claim_key(self, key: str) -> str:
        return f"{self._tag}:claim:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")
                                                       ).hexdigest()

    def _now(self, now: float) -> tuple[str, str]:
        return repr(float(now)), "1" if self.use_server_time else "0"

    # ------------------------------------------------------------------ script calls
    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            result = self._scripts[name](keys=list(keys), args=list(args))
        except redis.RedisError as exc:
            self._failed(exc)
            raise self._error(name, exc) from self._cause(exc)
        self._unanswered_at = None
        return result

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
        return _secrets(self.url, self.client.connection_pool.connection_kwargs)

    def _failed(self, exc: redis.RedisError) -> None:
        if isinstance(exc, redis.TimeoutError):  # a refused connection fails fast anyway
            self._unanswered_at = time.monotonic()

    def _unanswered(self) -> bool:
        """True within a second of Redis leaving a call unanswered (a timeout): a commit
        then goes straight to the backlog instead of waiting out another timeout (a reserve
        still tries, so that limits are checked whenever Redis can check them)."""
        since = self._unanswered_at
        return since is not None and time.monotonic() - since < _QUIET_AFTER_FAILURE

    def _aclient(self) -> tuple[aredis.Redis, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            # A blocking pool: a burst of tasks waits for a connection instead of failing.
            if self.url is not None:
                pool = aredis.BlockingConnectionPool.from_url(
                    self.url, **_pool_options(self.max_connections, asyncio_=True)
                )
            else:
                kwargs = dict(self.client.connection_pool.connection_kwargs)
                kwargs.pop("connection_class", None)
                pool = aredis.BlockingConnectionPool(
                    max_connections=self.max_connections, **kwargs
                )
            client = aredis.Redis(connection_pool=pool)
            scripts = {name: client.register_script(src) for name, src in self._sources.items()}
            found = self._async[loop] = (client, scripts)
        return found

    async def _arun(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        _, scripts = self._aclient()
        try:
            result = await scripts[name](keys=list(keys), args=list(args))
        except redis.RedisError as exc:
            self._failed(exc)
            raise self._error(name, exc) from self._cause(exc)
        self._unanswered_at = None
        return result

    # ------------------------------------------------------------------ arguments
    def _commit_call(
        self, entry: UsageEntry, reservation: Reservation | None, commit_id: str,
        late: float = 0.0,
    ) -> tuple[list[str], list[Any]]:
        """The script's keys and arguments; ``late``: seconds since the commit was first
        tried (a replay from the backlog)."""
        record, delta = entry.record, entry.delta
        keys = [self._workspaces_key]
        workspaces = []
        for scope in entry.scopes:
            keys += self._month_keys(scope, entry.month)
            workspaces.append(scope[len("workspace:"):] if scope.startswith("workspace:") else "")
        keys.append(f"{self._tag}:done:{commit_id}")
        age = entry.now - entry.when + late  # how long ago the call was, at the server's now
        args = [
            *self._now(entry.now + late), entry.month, reservation.id if reservation else "",
            delta.requests, delta.tokens, delta.calls, delta.errors, delta.rate_limited,
            delta.cost_nanos, record.model, record.api_method, 0 if record.success else 1,
            record.total_tokens, record.input_tokens, record.output_tokens, int(entry.unpriced),
            encode(entry), self.recent_capacity,
            entry.day_name, delta.unpriced_nanos, repr(float(age)), MAX_BREAKDOWN_NAMES,
            *workspaces,
        ]
        return keys, args

    def _reserve_call(
        self, scopes: Sequence[str], delta: UsageDelta, limits: Mapping[str, Limits],
        now: float, month: str, ttl: float, rid: str,
    ) -> tuple[list[str], list[Any]]:
        keys = [self._workspaces_key]
        args: list[Any] = [*self._now(now), month, rid, delta.requests, delta.tokens,
                           delta.cost_nanos, repr(float(ttl))]
        for scope in scopes:
            keys += self._month_keys(scope, month)
            found = limits.get(scope)
            ws = scope[len("workspace:"):] if scope.startswith("workspace:") else ""
            if found is None:
                args += [ws, 0, "", "", "", "", ""]
            else:
                args += [ws, 1, *("" if v is None else v for v in (
                    found.rpm, found.tpm, found.rpd, found.tpd, found.budget_nanos))]
        return keys, args

    @staticmethod
    def _reservation(
        result: Any, scopes: Sequence[str], delta: UsageDelta, month: str, rid: str,
    ) -> Reservation | Denial:
        if int(result[0]) == 1:
            return Reservation(id=rid, scopes=tuple(scopes), delta=delta,
                               at=float(_text(result[2])), month=month,
                               expires_at=float(_text(result[1])))
        _, index, limit, used, maximum, retry = (_text(v) for v in result)
        return Denial(scopes[int(index) - 1], limit, int(used), int(maximum),
                      float(retry) if retry else None)

    def _release_keys(self, reservation: Reservation) -> list[str]:
        keys: list[str] = []
        for scope in reservation.scopes:
            keys += self._month_keys(scope, reservation.month)
        return keys

    @staticmethod
    def _counters(values: Any) -> Counters:
        m_r, m_t, m_c, m_e, m_l, d_r, d_t, nanos, u_calls, u_nanos = (
            int(_text(v)) for v in values)
        return Counters(requests_minute=m_r, tokens_minute=m_t, requests_day=d_r,
                        tokens_day=d_t, cost_month_nanos=nanos, calls_minute=m_c,
                        errors_minute=m_e, rate_limited_minute=m_l,
                        unpriced_month_calls=u_calls, unpriced_month_nanos=u_nanos)

    @staticmethod
    def _aggregates(raw: Mapping[Any, Any]) -> dict[str, Aggregate]:
        table: dict[str, list[int]] = {}
        for field, value in raw.items():
            index, _, name = _text(field).partition(":")
            table.setdefault(name, [0] * _AGGREGATE_FIELDS)[int(index)] = int(_text(value))
        return {name: Aggregate(*values) for name, values in table.items()}

    # ------------------------------------------------------------------ Store: sync
    def commit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        commit_id = uuid.uuid4().hex
        if self._unanswered():
            self._keep(entry, reservation, commit_id)
            return
        try:
            self._run("commit", *self._commit_call(entry, reservation, commit_id))
        except StorageError as exc:
            if not isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError)):
                raise
            self._keep(entry, reservation, commit_id)
            return
        if self._backlog or self._orphans:
            self._replay()

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

    def _replay(self) -> None:
        """Replay held commits (a hundred per successful call) now that Redis answers, and
        give back the holds of reserves that timed out."""
        while self._orphans:
            with self._backlog_lock:
                if not self._orphans:
                    break
                orphan, since = self._orphans.popleft()
            now = orphan.at + (time.monotonic() - since)
            try:
                self._run("release", self._release_keys(orphan), [*self._now(now), orphan.id])
            except StorageError:
                with self._backlog_lock:
                    self._orphans.appendleft((orphan, since))
                return
        for entry, reservation, commit_id, since in self._take_backlog():
            late = time.monotonic() - since
            try:
                self._run("commit", *self._commit_call(entry, reservation, commit_id, late))
            except StorageError:
                with self._backlog_lock:
                    self._backlog.appendleft((entry, reservation, commit_id, since))
                return

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
        rid = uuid.uuid4().hex
        try:
            result = self._run("reserve", *self._reserve_call(scopes, delta, limits, now,
                                                              month, ttl, rid))
        except StorageError as exc:
            self._orphaned(exc, rid, scopes, month, now)
            raise
        if self._backlog or self._orphans:
            self._replay()
        return self._reservation(result, scopes, delta, month, rid)

    def _orphaned(self, exc: StorageError, rid: str, scopes: Sequence[str], month: str,
                  now: float) -> None:
        """A reserve whose reply never came may still run (Redis reads what was sent once it
        answers again): its hold is given back then, so the call (let through or refused
        without it) is not counted twice."""
        if isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError)):
            with self._backlog_lock:
                if len(self._orphans) < self._backlog_size:
                    self._orphans.append((Reservation(rid, tuple(scopes), UsageDelta(), now,
                                                      month, now), time.monotonic()))

    def release(self, reservation: Reservation, now: float) -> bool:
        keys = self._release_keys(reservation)
        return bool(self._run("release", keys, [*self._now(now), reservation.id]))

    def claim(self, key: str, now: float, ttl: float) -> bool:
        return bool(self._run("claim", [self._claim_key(key)], [*self._now(now), repr(ttl)]))

    def counters(self, scope: str, now: float, month: str) -> Counters:
        keys = self._month_keys(scope, month)
        return self._counters(self._run("counters", keys, [*self._now(now), month]))

    def breakdown(self, scope: str, month: str, by: Breakdown) -> dict[str, Aggregate]:
        key = self._month_keys(scope, month)[_BREAKDOWN_KEY[by]]
        try:
            raw = self.client.hgetall(key)
        except redis.RedisError as exc:
            raise self._error("breakdown", exc) from self._cause(exc)
        return self._aggregates(raw)

    def recent(self, scope: str, n: int) -> list[UsageRecord]:
        if n <= 0:
            return []
        try:
            rows = self.client.lrange(self._scope_keys(scope)[9], 0, n - 1)
        except redis.RedisError as exc:
            raise self._error("recent", exc) from self._cause(exc)
        return [decode(row) for row in rows]

    def workspaces(self) -> list[str]:
        try:
            members = self.client.smembers(self._workspaces_key)
        except redis.RedisError as exc:
            raise self._error("workspaces", exc) from self._cause(exc)
        return sorted(_name(m) for m in members)

    def clear(self) -> int:
        """Delete every key of this store's prefix (for tests); returns how many."""
        removed = 0
        for key in self.client.scan_iter(match=f"{self._tag}:*".replace("{", "\\{")
                                         .replace("}", "\\}"), count=1000):
            removed += int(self.client.delete(key))
        return removed

    def close(self, timeout: float | None = None) -> None:
        """Replay what the backlog holds (within ``timeout``), then close the client."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + (5.0 if timeout is None else timeout)
        while (self._backlog or self._orphans) and time.monotonic() < deadline:
            held = len(self._backlog) + len(self._orphans)
            self._replay()
            if len(self._backlog) + len(self._orphans) >= held:
                break  # Redis still does not answer
        if self._backlog:
            logger.error("quota-hooks: %r closed with %d commit(s) Redis never took; they "
                         "are lost", self, len(self._backlog))
            self.dropped_records += len(self._backlog)
            self._backlog.clear()
        self.client.close()

    # ------------------------------------------------------------------ Store: async
    async def acommit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        commit_id = uuid.uuid4().hex
        if self._unanswered():
            self._keep(entry, reservation, commit_id)
            return
        try:
            await self._arun("commit", *self._commit_call(entry, reservation, commit_id))
        except StorageError as exc:
            if not isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError)):
                raise
            self._keep(entry, reservation, commit_id)
            return
        if self._backlog:
            for held, held_reservation, held_id, since in self._take_backlog():
                late = time.monotonic() - since
                try:
                    await self._arun("commit", *self._commit_call(held, held_reservation,
                                                                  held_id, late))
                except StorageError:
                    with self._backlog_lock:
                        self._backlog.appendleft((held, held_reservation, held_id, since))
                    break

    async def areserve(
        self,
        scopes: Sequence[str],
        delta: UsageDelta,
        limits: Mapping[str, Limits],
        now: float,
        month: str,
        ttl: float,
    ) -> Reservation | Denial:
        rid = uuid.uuid4().hex
        try:
            result = await self._arun("reserve", *self._reserve_call(scopes, delta, limits,
                                                                     now, month, ttl, rid))
        except StorageError as exc:
            self._orphaned(exc, rid, scopes, month, now)
            raise
        return self._reservation(result, scopes, delta, month, rid)

    async def arelease(self, reservation: Reservation, now: float) -> bool:
        keys = self._release_keys(reservation)
        return bool(await self._arun("release", keys, [*self._now(now), reservation.id]))

    async def aclaim(self, key: str, now: float, ttl: float) -> bool:
        return bool(await self._arun("claim", [self._claim_key(key)],
                                     [*self._now(now), repr(ttl)]))

    async def acounters(self, scope: str, now: float, month: str) -> Counters:
        keys = self._month_keys(scope, month)
        return self._counters(await self._arun("counters", keys, [*self._now(now), month]))

    async def abreakdown(self, scope: str, month: str, by: Breakdown) -> dict[str, Aggregate]:
        client, _ = self._aclient()
        key = self._month_keys(scope, month)[_BREAKDOWN_KEY[by]]
        try:
            raw = await client.hgetall(key)
        except redis.RedisError as exc:
            raise self._error("breakdown", exc) from self._cause(exc)
        return self._aggregates(raw)

    async def arecent(self, scope: str, n: int) -> list[UsageRecord]:
        if n <= 0:
            return []
        client, _ = self._aclient()
        try:
            rows = await client.lrange(self._scope_keys(scope)[9], 0, n - 1)
        except redis.RedisError as exc:
            raise self._error("recent", exc) from self._cause(exc)
        return [decode(row) for row in rows]

    async def aworkspaces(self) -> list[str]:
        client, _ = self._aclient()
        try:
            members = await client.smembers(self._workspaces_key)
        except redis.RedisError as exc:
            raise self._error("workspaces", exc) from self._cause(exc)
        return sorted(_name(m) for m in members)

    async def aclose(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        found = self._async.pop(loop, None)
        if found is not None:
            await found[0].aclose()
        self.client.close()
