"""`SQLiteStore`: usage in one SQLite file, shared exactly by every process on the host.

The embedded default for the CLI, the server and the demo. stdlib ``sqlite3`` in WAL mode.

* **Counters** live in per-second and per-minute bucket rows (``buckets``), month totals in
  ``months`` and the breakdowns in ``breakdowns``: a status read sums at most 60 + 1440 bucket
  rows, whatever the size of the history. Old buckets are pruned as scopes are written.
* **History** is the ``history`` table (one JSON row per record, never a prompt or a key),
  indexed per scope by ``history_scopes``.
* **Reservations** run in ``BEGIN IMMEDIATE`` transactions: the check of every limit and the
  hold happen under SQLite's write lock, so several processes sharing the file share limits
  exactly. Threads of one process also serialize on an in-process lock first, so they never
  spin in SQLite's busy handler.
* **Schema**: versioned in ``meta``; an older file is migrated in place when opened, a newer
  one is refused.

Durability (``durability=``):

* ``"batched"`` (default): ``commit()`` puts the record on a bounded queue and a writer thread
  writes the queue in batches, one transaction per batch. Once :meth:`SQLiteStore.flush`
  returns True, every record committed before it was called is in the database file and
  survives ``kill -9``; a plain interpreter exit flushes too (within
  ``quota_hooks._exit.EXIT_TIMEOUT``). Reads and reservations flush first (waiting at most
  ``lock_timeout``), so a process always sees its own records; records committed while they
  wait do not hold them up.
* ``"sync"``: ``commit()`` returns only after its transaction is written: a returned
  ``record()`` survives ``kill -9``.

Either way ``PRAGMA synchronous=NORMAL`` (the WAL default) survives a killed process; a power
loss can lose the last transactions. Pass ``synchronous="FULL"`` to survive that too, slower.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import add
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio.to_thread

from .._exit import close_at_exit
from .._fork import renew_after_fork
from ..errors import ConfigurationError, StorageError
from ..usage import UsageRecord
from ..windows import DAY, MINUTE, Window
from ._rows import decode, encode
from .base import (
    MAX_BREAKDOWN_NAMES,
    OTHER,
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
    first_denial,
    is_budget_scope,
    totals_key,
)

__all__ = ["SCHEMA_VERSION", "RepriceReport", "SQLiteStore"]

logger = logging.getLogger("quota_hooks")

SCHEMA_VERSION = 4
_WINDOWS: tuple[Window, Window] = (MINUTE, DAY)
_MIN, _DAY = 0, 1

#: DDL per schema version; a file at version N gets every step above N, in order.
MIGRATIONS: Mapping[int, Sequence[str]] = {
    1: (
        """CREATE TABLE buckets (
            scope TEXT NOT NULL, win INTEGER NOT NULL, bucket INTEGER NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0,
            calls INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
            rate_limited INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, win, bucket)) WITHOUT ROWID""",
        """CREATE TABLE months (
            scope TEXT NOT NULL, month TEXT NOT NULL, cost_nanos INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, month)) WITHOUT ROWID""",
        """CREATE TABLE breakdowns (
            scope TEXT NOT NULL, month TEXT NOT NULL, by_kind TEXT NOT NULL, name TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
            tokens INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0, cost_nanos INTEGER NOT NULL DEFAULT 0,
            unpriced INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, month, by_kind, name)) WITHOUT ROWID""",
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY, at REAL NOT NULL, record TEXT NOT NULL)""",
        """CREATE TABLE history_scopes (
            scope TEXT NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (scope, id)) WITHOUT ROWID""",
        """CREATE TABLE reservations (
            id TEXT PRIMARY KEY, scopes TEXT NOT NULL, requests INTEGER NOT NULL,
            tokens INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, at REAL NOT NULL,
            month TEXT NOT NULL, expires_at REAL NOT NULL)""",
        "CREATE INDEX reservations_expiry ON reservations (expires_at)",
        """CREATE TABLE claims (key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID""",
    ),
    # Calls without a price, and what the budget charged them at the fallback price.
    2: (
        "ALTER TABLE months ADD COLUMN unpriced_calls INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE months ADD COLUMN unpriced_nanos INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE breakdowns ADD COLUMN unpriced_nanos INTEGER NOT NULL DEFAULT 0",
    ),
    # What each record was charged and where it counted, so that it can be repriced.
    3: (
        "ALTER TABLE history ADD COLUMN charge_nanos INTEGER",
        "ALTER TABLE history ADD COLUMN unpriced_nanos INTEGER",
        "ALTER TABLE history ADD COLUMN month TEXT",
        "ALTER TABLE history ADD COLUMN day TEXT",
        "CREATE INDEX history_at ON history (at)",
    ),
    # The control plane: the policy table (its version in meta) and the alert history.
    4: (
        """CREATE TABLE policies (
            key TEXT PRIMARY KEY, document TEXT NOT NULL, version INTEGER NOT NULL,
            updated_at REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE alerts (
            scope TEXT NOT NULL, id INTEGER NOT NULL, document TEXT NOT NULL,
            PRIMARY KEY (scope, id)) WITHOUT ROWID""",
        # The token mix of each breakdown row: cached and cache-write input, reasoning.
        "ALTER TABLE breakdowns ADD COLUMN cached_input_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE breakdowns ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE breakdowns ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0",
        # When a month's budget was last reset (0: never).
        "ALTER TABLE months ADD COLUMN reset_at REAL NOT NULL DEFAULT 0",
    ),
}

# A bucket never goes below zero: an undo takes at most what its bucket holds (a clock that
# stepped back folded the rest into another bucket, where it counts until that bucket leaves
# the window: an over-count, never an under-count).
_ADD_BUCKET = """
INSERT INTO buckets (scope, win, bucket, requests, tokens, calls, errors, rate_limited)
VALUES (?, ?, ?, MAX(0, ?4), MAX(0, ?5), MAX(0, ?6), MAX(0, ?7), MAX(0, ?8))
ON CONFLICT (scope, win, bucket) DO UPDATE SET
  requests = MAX(0, requests + ?4), tokens = MAX(0, tokens + ?5),
  calls = MAX(0, calls + ?6), errors = MAX(0, errors + ?7),
  rate_limited = MAX(0, rate_limited + ?8)"""
_ADD_MONTH = """
INSERT INTO months (scope, month, cost_nanos, unpriced_calls, unpriced_nanos) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (scope, month) DO UPDATE SET cost_nanos = cost_nanos + excluded.cost_nanos,
  unpriced_calls = unpriced_calls + excluded.unpriced_calls,
  unpriced_nanos = unpriced_nanos + excluded.unpriced_nanos"""
_ADD_BREAKDOWN = """
INSERT INTO breakdowns (scope, month, by_kind, name, requests, errors, tokens, input_tokens,
                        output_tokens, cost_nanos, unpriced, unpriced_nanos,
                        cached_input_tokens, cache_write_tokens, reasoning_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (scope, month, by_kind, name) DO UPDATE SET
  requests = requests + excluded.requests, errors = errors + excluded.errors,
  tokens = tokens + excluded.tokens, input_tokens = input_tokens + excluded.input_tokens,
  output_tokens = output_tokens + excluded.output_tokens,
  cost_nanos = cost_nanos + excluded.cost_nanos, unpriced = unpriced + excluded.unpriced,
  unpriced_nanos = unpriced_nanos + excluded.unpriced_nanos,
  cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
  cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
  reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens"""
# Buckets from the window's start on, a future one too (a late reader's, or a clock that
# stepped back: it keeps counting until a writer folds it into now's bucket).
_SUM = """
SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens), 0), COALESCE(SUM(calls), 0),
       COALESCE(SUM(errors), 0), COALESCE(SUM(rate_limited), 0)
FROM buckets WHERE scope = ? AND win = ? AND bucket >= ?"""


#: Seconds close() waits for operations under way in other threads.
_CLOSE_WAIT = 5.0
_FOLD = """
INSERT INTO buckets (scope, win, bucket, requests, tokens, calls, errors, rate_limited)
SELECT scope, win, ?, SUM(requests), SUM(tokens), SUM(calls), SUM(errors), SUM(rate_limited)
FROM buckets WHERE scope = ? AND win = ? AND bucket > ? GROUP BY scope, win
ON CONFLICT (scope, win, bucket) DO UPDATE SET
  requests = requests + excluded.requests, tokens = tokens + excluded.tokens,
  calls = calls + excluded.calls, errors = errors + excluded.errors,
  rate_limited = rate_limited + excluded.rate_limited"""

_T = TypeVar("_T")
#: ``price(record) -> (cost, price source, charge nano-dollars, unpriced part of it)``.
Repricer = Callable[[UsageRecord], tuple["Decimal | None", "str | None", int, int]]


@dataclass
class RepriceReport:
    """What :meth:`SQLiteStore.reprice` did: records seen and changed, and per budget month
    the total charged before and after (nano-dollars, summed over every scope's record)."""

    records: int = 0
    changed: int = 0
    months: dict[str, list[int]] = field(default_factory=dict)

    def add(self, month: str, before: int, after: int) -> None:
        totals = self.months.setdefault(month, [0, 0])
        totals[0] += before
        totals[1] += after


def _nanos(usd: Decimal) -> int:
    from ..pricing import to_nanos

    return to_nanos(usd)
_Item = tuple[UsageEntry, "Reservation | None"]
#: Seconds a fork waits at most for this process's threads to leave SQLite (then it goes on).
_FORK_WAIT = 2.0
#: Connections a forked child could not close (in use by a thread at the fork): kept open.
_ABANDONED: list[object] = []
#: Write attempts for a batch that meets a transient error (busy, locked, I/O) while the store
#: is closing; before that the writer retries for as long as the store is open.
_CLOSING_ATTEMPTS = 3


class _Owned:
    """A thread's connection, closed as soon as the thread ends (its thread-local goes) or
    the store closes. A bare connection would wait for the cyclic garbage collector: its
    statement cache refers back to it."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __del__(self) -> None:
        self.close()


class _Batch:
    """Aggregated writes of one transaction: rows summed in Python, then one upsert each."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, int, int], list[int]] = {}
        self.months: dict[tuple[str, str], list[int]] = {}
        self.breakdowns: dict[tuple[str, str, str, str], list[int]] = {}
        self.touched: set[str] = set()

    def bucket(self, scope: str, win: int, bucket: int, counts: Sequence[int]) -> None:
        row = self.buckets.get((scope, win, bucket))
        if row is None:
            self.buckets[(scope, win, bucket)] = list(counts)
        else:
            row[:] = map(add, row, counts)

    def month(self, scope: str, month: str, nanos: int, unpriced: int = 0,
              unpriced_nanos: int = 0) -> None:
        row = self.months.get((scope, month))
        if row is None:
            self.months[(scope, month)] = [nanos, unpriced, unpriced_nanos]
        else:
            row[0] += nanos
            row[1] += unpriced
            row[2] += unpriced_nanos

    def apply(self, conn: sqlite3.Connection) -> None:
        if self.buckets:
            conn.executemany(_ADD_BUCKET, [(*k, *v) for k, v in self.buckets.items()])
        if self.months:
            conn.executemany(_ADD_MONTH, [(*k, *v) for k, v in self.months.items()])
        if self.breakdowns:
            conn.executemany(_ADD_BREAKDOWN, [(*k, *v) for k, v in self.breakdowns.items()])


#: ``price_source`` of a cost that came with the record, not from the price book: the
#: caller's own (``provided``) or litellm's ``response_cost`` (``QuotaLogger(cost_source=
#: "litellm")``). ``reprice`` keeps these costs.
PROVIDED_SOURCES = frozenset({"provided", "litellm"})


def _provided(record: UsageRecord) -> bool:
    """True when ``record``'s cost was given with it (see :data:`PROVIDED_SOURCES`)."""
    return record.cost is not None and record.price_source in PROVIDED_SOURCES


class SQLiteStore:
    """The :class:`~quota_hooks.storage.base.Store` in one SQLite file (see the module doc).

    Args:
        path: the database file; created with its directory if missing.
        durability: ``"batched"`` (a writer thread, :meth:`flush` to wait) or ``"sync"``.
        synchronous: SQLite's ``PRAGMA synchronous``: ``"NORMAL"`` or ``"FULL"``.
        batch_size: records written per transaction at most.
        queue_size: records queued for the writer at most. While the writer is healthy a
            ``commit()`` waits for room at most ``lock_timeout``; while it is failing (a full,
            read-only or locked disk) a record that finds no room is dropped at once, counted
            in :attr:`dropped_records` and raised as :class:`StorageError` (the manager shows
            ``degraded``): the caller is never held.
        busy_timeout: seconds the writer thread waits for another process's write lock.
        lock_timeout: seconds a caller waits at most, for the write lock (reserve, release,
            claim, a ``sync`` commit) or for the writer to catch up before a read.
        write_timeout: seconds the writer keeps retrying a batch that fails with a transient
            error (busy, locked, full, I/O) before it drops the batch (counted, logged).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "quota.db",
        *,
        durability: Literal["batched", "sync"] = "batched",
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        batch_size: int = 2000,
        queue_size: int = 20_000,
        busy_timeout: float = 30.0,
        lock_timeout: float = 2.0,
        write_timeout: float = 30.0,
    ) -> None:
        if durability not in ("batched", "sync"):
            raise ConfigurationError(
                f"durability must be 'batched' or 'sync', got {durability!r}"
            )
        if str(synchronous).upper() not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        for name, value in [("batch_size", batch_size), ("queue_size", queue_size)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a whole number >= 1, got {value!r}")
        for name, number in [("busy_timeout", busy_timeout), ("lock_timeout", lock_timeout),
                             ("write_timeout", write_timeout)]:
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not (
                    0 < number < 86_400):
                raise ConfigurationError(
                    f"{name} must be a number of seconds above 0, got {number!r}")
        self.path = Path(path)
        self.durability = durability
        self.synchronous = str(synchronous).upper()
        self.batch_size = batch_size
        self.busy_timeout = float(busy_timeout)
        self.lock_timeout = float(lock_timeout)
        self.write_timeout = float(write_timeout)
        self._queue_size = queue_size
        self._fresh_threads_state()
        self._closed = False
        self.write_errors = 0
        """Writer transactions that failed (each was retried, or its records dropped)."""
        self.dropped_records = 0
        """Records that could not be written at all, logged: a batch the writer gave up on,
        or a record that found the queue full while the writer was failing."""
        self._names: dict[tuple[str, str, str], set[str]] = {}  # breakdown names, per writer
        self._last_drop: float | None = None  # monotonic
        self._writer: threading.Thread | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"opening SQLite store {str(self.path)!r} failed: {exc}") from exc
        self._stopping = False
        if durability == "batched":
            self._start_writer()
            close_at_exit(self, 2)  # a plain exit still writes what is queued
        renew_after_fork(self, quiesce=True)

    def _fresh_threads_state(self) -> None:
        """This process's connections, locks and writer queue, new (at the start, and in a
        child after ``fork()``)."""
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Owned] = weakref.WeakSet()
        self._conn_lock = threading.Lock()
        # Operations of callers' threads under way: close() waits for them before it closes
        # their connections (a connection closed under another thread's query crashes).
        self._busy = 0
        self._idle = threading.Condition(self._conn_lock)
        self._write_lock = threading.Lock()
        # The writer's queue: a deque under one lock, a semaphore for its bound, and two
        # counters. flush() waits for ``processed`` to reach the ``enqueued`` it saw, so a
        # steady stream of new records never starves it (a Queue.join() would wait for them).
        self._pending: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._slots = threading.Semaphore(self._queue_size)
        self._enqueued = self._processed = 0
        self._failing_since: float | None = None  # monotonic; the writer's first failure
        # The writer's progress when it last kept a caller waiting lock_timeout for it: the
        # callers after wait no more until it moves.
        self._stuck_at: int | None = None
        # What _before_fork holds until the fork is made, and whether it found every thread
        # out of SQLite.
        self._forking: list[threading.Lock] = []
        self._quiet = True

    def _start_writer(self) -> None:
        self._writer = threading.Thread(
            target=self._write_loop, name="quota-hooks-sqlite-writer", daemon=True
        )
        self._writer.start()

    def _before_fork(self) -> None:
        """Before a fork: wait (briefly) until no thread of this process is inside SQLite on
        this store's connections, and keep it so until the fork is made: the child must be
        able to close its copies of them."""
        self._quiet = False
        if not self._conn_lock.acquire(timeout=_FORK_WAIT):
            return
        self._forking.append(self._conn_lock)
        idle = self._idle.wait_for(lambda: self._busy == 0, timeout=_FORK_WAIT)
        if self._write_lock.acquire(timeout=_FORK_WAIT):  # the writer is between batches
            self._forking.append(self._write_lock)
            self._quiet = idle

    def _after_fork_in_parent(self) -> None:
        for lock in reversed(self._forking):
            lock.release()
        self._forking = []
        self._quiet = True

    def _after_fork_in_child(self) -> None:
        """A child process after ``fork()``: new locks, a new writer with an empty queue
        (the parent writes what it had queued), and none of the parent's connections: SQLite
        must not use one across a fork, and the locks it counts per file for them in this
        process would make the child's own connections wait forever, so they are closed
        (which releases only this process's locks: the parent holds its own). When a thread
        was still inside SQLite at the fork (waiting on another process's lock), they are
        left open instead: closing one would wait for that thread forever, and the child's
        writes then wait and retry like any writes to a locked file."""
        if self._quiet:
            for owned in list(self._connections):
                owned.close()
        else:  # a thread was inside SQLite at the fork: a close could wait for it forever
            _ABANDONED.extend(self._connections)
        self._fresh_threads_state()
        if self._writer is not None and not self._closed and not self._stopping:
            self._start_writer()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, durability={self.durability!r})"

    # ------------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError(f"{self!r} is closed")
        owned: _Owned | None = getattr(self._local, "owned", None)
        if owned is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            if threading.current_thread() is not self._writer:
                # A caller's thread: it waits for another process's lock at most lock_timeout.
                conn.execute(f"PRAGMA busy_timeout={int(self.lock_timeout * 1000)}")
            owned = self._local.owned = _Owned(conn)
            with self._conn_lock:
                self._connections.add(owned)
        return owned.conn

    @contextlib.contextmanager
    def _transaction(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, serialized with this process's other writers.

        A caller's thread waits for them at most ``lock_timeout`` (then ``StorageError``); the
        writer thread waits as long as it takes. A failed ``COMMIT`` (a full disk) is rolled
        back, so the connection is never left inside a transaction.
        """
        conn = self._conn()
        writer = threading.current_thread() is self._writer
        if not self._write_lock.acquire(
                timeout=-1 if writer else self.lock_timeout if wait is None else wait):
            raise StorageError(
                f"SQLite store {str(self.path)!r}: this process's writer held the write lock "
                f"longer than lock_timeout={self.lock_timeout:g}s"
            )
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        finally:
            self._write_lock.release()

    def _migrate(self) -> None:
        # Opening waits for other processes as long as the writer does, not lock_timeout.
        self._conn().execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        with self._transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{str(self.path)!r} has schema version {version}, newer than this "
                    f"quota-hooks understands ({SCHEMA_VERSION}); upgrade quota-hooks"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    c.execute(statement)
            if version != SCHEMA_VERSION:
                c.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        self._conn().execute(f"PRAGMA busy_timeout={int(self.lock_timeout * 1000)}")

    def schema_version(self) -> int:
        """The schema version of the file."""
        row = self._guard(lambda: self._conn().execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone(), what="schema_version")
        return int(row[0])

    # ------------------------------------------------------------------ writes
    def commit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        if not self._queued():
            try:
                self._guard(self._write_batch, [(entry, reservation)], what="commit")
                return
            except StorageError as exc:
                if self._closed or not isinstance(exc.__cause__, (sqlite3.OperationalError,
                                                                  type(None))):
                    with self._lock:
                        self.dropped_records += 1  # a record SQLite can never store
                        self._last_drop = time.monotonic()
                    raise
                self._hand_to_writer(exc)  # busy, locked, full, I/O: retried, not lost
        self._check_open()
        if not self._slots.acquire(blocking=False):
            wait = 0.0 if self._failing_since is not None else self.lock_timeout
            if not self._slots.acquire(timeout=wait):
                self._queue_full(entry)
        self._enqueue((entry, reservation))

    async def acommit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        if self._queued() and self._slots.acquire(blocking=False):
            self._enqueue((entry, reservation))
            return
        await anyio.to_thread.run_sync(self.commit, entry, reservation)

    def _queued(self) -> bool:
        """True when a commit goes to the writer: always with ``batched``; with ``sync`` only
        while a writer it started still has records to write (or is failing)."""
        if self._writer is None:
            return False
        return self.durability == "batched" or self._failing_since is not None or (
            self._processed < self._enqueued)

    def _hand_to_writer(self, exc: StorageError) -> None:
        """A ``sync`` commit met a file it could not write in time (another process's long
        transaction, a full disk): the record goes to a writer thread, which retries it like
        a batch (for ``write_timeout``, then counts the drop), and the next commits queue
        behind it until it has caught up; then ``sync`` writes resume."""
        with self._lock:
            start = self._writer is None
            if start:
                self._start_writer()
        if start:
            logger.warning("quota-hooks: a sync commit to %s failed (%s); it and the commits "
                           "after it are written by a writer thread until the file takes "
                           "writes again", self.path, exc)
            close_at_exit(self, 2)

    def _queue_full(self, entry: UsageEntry) -> None:
        with self._lock:
            self.dropped_records += 1
            self._last_drop = time.monotonic()
            first = self.dropped_records == 1
        if first:
            logger.error("quota-hooks: the SQLite writer of %s is behind (%s); records that "
                         "find its queue full are dropped and counted in dropped_records",
                         self.path, self._writer_state())
        raise StorageError(
            f"SQLite store {str(self.path)!r}: the record was dropped, the writer's queue is "
            f"full ({self._writer_state()})"
        )

    def _writer_state(self) -> str:
        if self._failing_since is None:
            return "the writer is slower than the calls"
        return (f"writes failing for {time.monotonic() - self._failing_since:.0f}s, "
                f"{self.write_errors} failed so far")

    def health(self) -> str | None:
        """None while every record reaches the file; else why not (the writer failing, or
        records dropped in the last five minutes): the manager shows ``degraded``."""
        if self._failing_since is not None:
            return f"SQLite writes failing: {self._writer_state()}"
        if self._stuck_at is not None and self._stuck_at == self._processed:
            return (f"SQLite writer waiting for the file (another process's transaction): "
                    f"{self._enqueued - self._processed} record(s) not written yet")
        if self._last_drop is not None and time.monotonic() - self._last_drop < 300:
            return f"SQLite store dropped {self.dropped_records} record(s)"
        return None

    def _check_open(self) -> None:
        if self._stopping or self._closed:
            raise StorageError(f"{self!r} is closed")

    def _enqueue(self, item: _Item) -> None:
        with self._lock:
            if self._stopping:
                self._slots.release()
                raise StorageError(f"{self!r} is closed")
            self._pending.append(item)
            self._enqueued += 1
            self._has_work.notify()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record committed before this call is in the file (or dropped
        as unwritable, see :attr:`dropped_records`). Returns False on timeout."""
        if self._writer is None:
            return True
        with self._lock:
            target = self._enqueued
            return self._progress.wait_for(lambda: self._processed >= target, timeout)

    def _caught_up(self, what: str) -> float:
        """Flush before a read or a reservation, so a process sees its own records: waiting
        at most ``lock_timeout``, and not at all while the writer is failing, or is still
        stuck where it kept an earlier caller waiting that long (another process's long
        transaction: a read then sees the file as it is; :meth:`health` says why).
        Reservations stay exact either way: a record's reservation holds its estimate until
        the record itself is written. Returns what is left of ``lock_timeout`` for the
        operation's own wait, so that a call never waits longer in all."""
        if self._writer is None or self._failing_since is not None:
            return self.lock_timeout
        start = time.monotonic()
        with self._lock:
            target = self._enqueued
            if self._processed >= target:
                return self.lock_timeout
            if self._stuck_at == self._processed:
                return 0.0
            caught = self._progress.wait_for(
                lambda: self._processed >= target or self._failing_since is not None,
                self.lock_timeout)
            self._stuck_at = None if caught else self._processed
        return max(0.0, self.lock_timeout - (time.monotonic() - start))

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._has_work.wait()
                if not self._pending:
                    return
                count = min(len(self._pending), self.batch_size)
                items = [self._pending.popleft() for _ in range(count)]
            try:
                self._write_items(items)
            finally:
                with self._lock:
                    self._processed += len(items)
                    self._progress.notify_all()
                self._slots.release(len(items))

    def _write_items(self, items: list[_Item]) -> None:
        """Write ``items``.

        A transient error (``OperationalError``: busy, locked, full, I/O) retries the batch
        with backoff for up to ``write_timeout`` (a few attempts while closing), then drops
        it: counted in ``dropped_records``, logged, and shown by :meth:`health`. Any other
        error means some record can never be written (a value SQLite cannot bind): the batch
        is split, each record tried alone, and only the ones that fail are dropped.
        """
        delay, attempts, started = 0.01, 0, time.monotonic()
        while True:
            try:
                self._write_batch(items)
                self._failing_since = None
                return
            except sqlite3.OperationalError as exc:
                self.write_errors += 1
                attempts += 1
                if self._failing_since is None:
                    with self._lock:
                        self._failing_since = time.monotonic()
                        self._progress.notify_all()  # reads stop waiting for the writer
                    logger.warning("quota-hooks: SQLite write failed, retrying for up to "
                                   "%gs: %s", self.write_timeout, exc)
                if (self._stopping and attempts >= _CLOSING_ATTEMPTS) or (
                        time.monotonic() - started >= self.write_timeout):
                    self._drop(items, exc)
                    return
                with self._lock:  # sleep, but wake for close()
                    self._has_work.wait_for(lambda: self._stopping, delay)
                delay = min(delay * 2, 1.0)
            except Exception as exc:
                self.write_errors += 1
                if len(items) == 1:
                    self._drop(items, exc)
                    return
                for item in items:
                    self._write_items([item])
                return

    def _drop(self, items: list[_Item], exc: BaseException) -> None:
        self.dropped_records += len(items)
        self._last_drop = time.monotonic()
        logger.error(
            "quota-hooks: %d usage record(s) could not be written to %s and were dropped "
            "(workspace %r): %r",
            len(items), self.path, items[0][0].record.workspace_id, exc,
        )

    def _write_batch(self, items: Sequence[_Item]) -> None:
        batch = _Batch()
        history: list[tuple[float, str, int, int, str, str]] = []
        links: list[list[str]] = []
        now = max(entry.now for entry, _ in items)
        with self._transaction() as conn:
            self._reap(conn, batch, now)
            for entry, reservation in items:
                if reservation is not None:
                    self._settle(conn, batch, reservation.id)
                history.append(
                    (entry.when, encode(entry),
                     entry.delta.cost_nanos, entry.delta.unpriced_nanos, entry.month,
                     entry.day_name)
                )
                links.append(list(entry.scopes))
            self._add_entries(batch, [entry for entry, _ in items], conn)
            batch.apply(conn)
            first = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM history").fetchone()[0]
            conn.executemany(
                "INSERT INTO history (id, at, record, charge_nanos, unpriced_nanos, month, day) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(first + i, *row) for i, row in enumerate(history)],
            )
            conn.executemany(
                "INSERT INTO history_scopes (scope, id) VALUES (?, ?)",
                [(scope, first + i) for i, scopes in enumerate(links) for scope in scopes],
            )
            self._prune(conn, batch.touched, now)

    def _name(self, conn: sqlite3.Connection, scope: str, month: str, by: str,
              name: str) -> str:
        """``name`` as the breakdown keeps it: :data:`OTHER` once the scope's month holds
        :data:`MAX_BREAKDOWN_NAMES` others (the names known are cached per writer; several
        processes may each add a few more, never without bound)."""
        if by == "day":
            return name
        key = (scope, month, by)
        names = self._names.get(key)
        if names is None:
            if len(self._names) >= 4096:
                self._names.clear()
            names = self._names[key] = {row[0] for row in conn.execute(
                "SELECT name FROM breakdowns WHERE scope = ? AND month = ? AND by_kind = ?",
                key)}
        if name in names:
            return name
        if len(names) >= MAX_BREAKDOWN_NAMES:
            return OTHER
        names.add(name)
        return name

    def _add_entries(self, batch: _Batch, entries: Sequence[UsageEntry],
                     conn: sqlite3.Connection | None = None) -> None:
        """Add what ``entries`` count to ``batch``. Entries that count in the same rows (the
        same scopes, buckets, month, model, API method and day) are summed first, so that a
        batch adds to each row once, however many of its records count there."""
        groups: dict[tuple[tuple[str, ...], str, int, int, str, str, str], list[int]] = {}
        for entry in entries:
            record, delta = entry.record, entry.delta
            when = entry.when
            unpriced = int(entry.unpriced)
            # The bucket counts, the month's charge, then the breakdown row (as _ADD_BREAKDOWN).
            values = (delta.requests, delta.tokens, delta.calls, delta.errors,
                      delta.rate_limited,
                      delta.cost_nanos, unpriced, delta.unpriced_nanos,
                      1, 0 if record.success else 1, record.total_tokens, record.input_tokens,
                      record.output_tokens, delta.cost_nanos - delta.unpriced_nanos, unpriced,
                      delta.unpriced_nanos, record.cached_input_tokens,
                      record.cache_write_tokens, record.reasoning_tokens)
            key = (entry.scopes, entry.month, MINUTE.bucket(when), DAY.bucket(when),
                   record.model, record.api_method, entry.day_name)
            sums = groups.get(key)
            if sums is None:
                groups[key] = list(values)
            else:
                sums[:] = map(add, sums, values)
        breakdowns = batch.breakdowns
        for (scopes, entry_month, minute, day, model, method, day_name), sums in groups.items():
            counts, charge, added = sums[:5], sums[5:8], sums[8:]
            day_counts = (sums[0], sums[1], 0, 0, 0)
            names = (("model", model), ("api_method", method))
            for scope in scopes:
                month = totals_key(scope, entry_month)
                batch.month(scope, month, *charge)
                if is_budget_scope(scope):  # a day or week budget: its cost is all it keeps
                    continue
                batch.touched.add(scope)
                batch.bucket(scope, _MIN, minute, counts)
                batch.bucket(scope, _DAY, day, day_counts)
                rows = [(scope, month, by, name if conn is None else
                         self._name(conn, scope, month, by, name)) for by, name in names]
                rows.append((scope, month, "day", day_name))
                for row_key in rows:
                    row = breakdowns.get(row_key)
                    if row is None:
                        breakdowns[row_key] = list(added)
                    else:
                        row[:] = map(add, row, added)

    def _apply_reservation(
        self, batch: _Batch, scopes: Sequence[str], requests: int, tokens: int, nanos: int,
        at: float, month: str, sign: int,
    ) -> None:
        # A hold is made in now's buckets (``at`` is now); an undo takes from the hold's own
        # buckets only, never from now's (after a fold merged them away: an over-count).
        counts = (sign * requests, sign * tokens, 0, 0, 0)
        minute, day = MINUTE.bucket(at), DAY.bucket(at)
        for scope in scopes:
            if not is_budget_scope(scope):
                batch.bucket(scope, _MIN, minute, counts)
                batch.bucket(scope, _DAY, day, counts)
            batch.month(scope, totals_key(scope, month), sign * nanos)

    def _settle(self, conn: sqlite3.Connection, batch: _Batch, reservation_id: str) -> bool:
        row = conn.execute(
            "DELETE FROM reservations WHERE id = ? "
            "RETURNING scopes, requests, tokens, cost_nanos, at, month",
            (reservation_id,),
        ).fetchone()
        if row is None:
            return False
        scopes, requests, tokens, nanos, at, month = row
        self._apply_reservation(batch, json.loads(scopes), requests, tokens, nanos, at, month, -1)
        return True

    def _reap(self, conn: sqlite3.Connection, batch: _Batch, now: float) -> None:
        """Forget reservations past their ttl; what they held stays counted (a call that was
        never recorded used its estimate)."""
        conn.execute("DELETE FROM reservations WHERE expires_at <= ?", (now,))

    def _prune(self, conn: sqlite3.Connection, scopes: set[str], now: float) -> None:
        for scope in scopes:
            self._fold_future(conn, scope, now)
            for win, window in enumerate(_WINDOWS):
                conn.execute(
                    "DELETE FROM buckets WHERE scope = ? AND win = ? AND bucket < ?",
                    (scope, win, window.oldest(now) - window.buckets),
                )

    def _fold_future(self, conn: sqlite3.Connection, scope: str, now: float) -> None:
        """Buckets that a clock step back left in the future join now's bucket (see
        :mod:`quota_hooks.windows`): they count for one more window, then expire. A late
        ``now`` (less than a window behind) moves nothing."""
        for win, window in enumerate(_WINDOWS):
            current = window.bucket(now)
            newest = conn.execute(
                "SELECT MAX(bucket) FROM buckets WHERE scope = ? AND win = ?", (scope, win)
            ).fetchone()[0]
            if newest is None or not window.stepped_back(current, newest):
                continue
            conn.execute(_FOLD, (current, scope, win, current))
            conn.execute("DELETE FROM buckets WHERE scope = ? AND win = ? AND bucket > ?",
                         (scope, win, current))

    # ------------------------------------------------------------------ reservations
    def reserve(
        self,
        scopes: Sequence[str],
        delta: UsageDelta,
        limits: Mapping[str, Limits],
        now: float,
        month: str,
        ttl: float,
    ) -> Reservation | Denial:
        wait = self._caught_up("reserve")
        return self._guard(self._reserve, scopes, delta, limits, now, month, ttl, wait,
                           what="reserve")

    def _reserve(
        self,
        scopes: Sequence[str],
        delta: UsageDelta,
        limits: Mapping[str, Limits],
        now: float,
        month: str,
        ttl: float,
        wait: float | None = None,
    ) -> Reservation | Denial:
        with self._transaction(wait) as conn:
            reaped = _Batch()
            self._reap(conn, reaped, now)
            reaped.apply(conn)
            for scope in scopes:
                scope_limits = limits.get(scope)
                if scope_limits is None:
                    continue
                self._fold_future(conn, scope, now)
                denial = self._check(conn, scope, delta, scope_limits, now, month)
                if denial is not None:
                    return denial
            reservation = Reservation(
                id=uuid.uuid4().hex, scopes=tuple(scopes), delta=delta, at=now, month=month,
                expires_at=now + ttl,
            )
            conn.execute(
                "INSERT INTO reservations (id, scopes, requests, tokens, cost_nanos, at, month, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (reservation.id, json.dumps(list(scopes)), delta.requests, delta.tokens,
                 delta.cost_nanos, now, month, reservation.expires_at),
            )
            held = _Batch()
            self._apply_reservation(held, scopes, delta.requests, delta.tokens,
                                    delta.cost_nanos, now, month, 1)
            held.apply(conn)
            return reservation

    def _check(
        self, conn: sqlite3.Connection, scope: str, delta: UsageDelta, limits: Limits,
        now: float, month: str,
    ) -> Denial | None:
        def first_bucket(window: Window, field: int) -> int | None:
            column = ("requests", "tokens")[field]
            found = conn.execute(
                f"SELECT MIN(bucket) FROM buckets WHERE scope = ? AND win = ? "
                f"AND bucket >= ? AND {column} != 0",
                (scope, _WINDOWS.index(window), window.oldest(now)),
            ).fetchone()[0]
            return None if found is None else int(found)

        windowless = is_budget_scope(scope)  # a day or week budget: its cost is all it has
        return first_denial(
            scope, limits, delta, now,
            minute=[0, 0] if windowless else self._sums(conn, scope, _MIN, now),
            day=[0, 0] if windowless else self._sums(conn, scope, _DAY, now),
            spent=lambda: self._month(conn, scope, totals_key(scope, month)),
            first_bucket=first_bucket,
        )


    def release(self, reservation: Reservation, now: float) -> bool:
        wait = self._caught_up("release")

        def run() -> bool:
            with self._transaction(wait) as conn:
                batch = _Batch()
                self._reap(conn, batch, now)  # past its ttl: forgotten, its hold stays
                found = self._settle(conn, batch, reservation.id)
                batch.apply(conn)
                return found

        return self._guard(run, what="release")


    def claim(self, key: str, now: float, ttl: float) -> bool:
        def run() -> bool:
            with self._transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO claims (key, until) VALUES (?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET until = excluded.until WHERE claims.until <= ?",
                    (key, now + ttl, now),
                )
                return cursor.rowcount == 1

        return self._guard(run, what="claim")


    # ------------------------------------------------------------------ control plane
    def policies(self, known: int = -1) -> PolicyTable | None:
        def run() -> PolicyTable | None:
            conn = self._conn()
            conn.execute("BEGIN")  # one snapshot: the version and the table it labels
            try:
                row = conn.execute(
                    "SELECT value FROM meta WHERE key = 'policies_version'").fetchone()
                version = int(row[0]) if row else 0
                if version == known:
                    return None
                rows = conn.execute(
                    "SELECT key, document, version, updated_at FROM policies").fetchall()
            finally:
                conn.execute("COMMIT")
            return PolicyTable(version, {k: StoredPolicy(d, int(v), float(t))
                                         for k, d, v, t in rows})

        return self._guard(run, what="policies")

    def put_policies(self, changes: Mapping[str, str | None], now: float, *,
                     only_if_new: bool = False, expect_version: int | None = None) -> int | None:
        def run() -> int | None:
            with self._transaction() as conn:
                row = conn.execute(
                    "SELECT value FROM meta WHERE key = 'policies_version'").fetchone()
                current = int(row[0]) if row else 0
                if (only_if_new and row is not None) or (
                        expect_version is not None and current != expect_version):
                    return None
                version = current + 1
                for key, document in changes.items():
                    if document is None:
                        conn.execute("DELETE FROM policies WHERE key = ?", (key,))
                    else:
                        conn.execute(
                            "INSERT OR REPLACE INTO policies (key, document, version, "
                            "updated_at) VALUES (?, ?, ?, ?)", (key, document, version, now))
                conn.execute("INSERT OR REPLACE INTO meta (key, value) "
                             "VALUES ('policies_version', ?)", (str(version),))
                return version

        return self._guard(run, what="put_policies")

    def append_alert(self, scope: str, document: str, now: float, keep: int) -> None:
        def run() -> None:
            with self._transaction() as conn:
                row = conn.execute("SELECT MAX(id) FROM alerts WHERE scope = ?",
                                   (scope,)).fetchone()
                last = int(row[0]) if row and row[0] is not None else 0
                conn.execute("INSERT INTO alerts (scope, id, document) VALUES (?, ?, ?)",
                             (scope, last + 1, document))
                conn.execute("DELETE FROM alerts WHERE scope = ? AND id <= ?",
                             (scope, last + 1 - max(1, keep)))

        self._guard(run, what="append_alert")

    def alert_history(self, scope: str, n: int) -> list[str]:
        if n <= 0:
            return []

        def run() -> list[str]:
            rows = self._conn().execute(
                "SELECT document FROM alerts WHERE scope = ? ORDER BY id DESC LIMIT ?",
                (scope, n)).fetchall()
            return [row[0] for row in rows]

        return self._guard(run, what="alert_history")

    def reset_budget(self, scope: str, month: str, now: float) -> int | None:
        self._caught_up("reset_budget")

        totals = totals_key(scope, month)

        def run() -> int | None:
            with self._transaction() as conn:
                row = conn.execute("SELECT cost_nanos FROM months WHERE scope = ? AND month = ?",
                                   (scope, totals)).fetchone()
                if row is None:
                    return None
                held = sum(int(nanos) for scopes, nanos, held_month in conn.execute(
                    "SELECT scopes, cost_nanos, month FROM reservations WHERE expires_at > ?",
                    (now,)) if totals_key(scope, held_month) == totals
                    and scope in json.loads(scopes))
                conn.execute("UPDATE months SET cost_nanos = ?, reset_at = ?, unpriced_calls = 0, "
                             "unpriced_nanos = 0 WHERE scope = ? AND month = ?",
                             (held, now, scope, totals))
                return int(row[0]) - held

        return self._guard(run, what="reset_budget")

    # ------------------------------------------------------------------ reads
    def _sums(self, conn: sqlite3.Connection, scope: str, win: int, now: float) -> list[int]:
        window = _WINDOWS[win]
        row = conn.execute(_SUM, (scope, win, window.oldest(now))).fetchone()
        return [int(v) for v in row]

    def _month(self, conn: sqlite3.Connection, scope: str, month: str) -> int:
        return self._month_row(conn, scope, month)[0]

    def _month_row(self, conn: sqlite3.Connection, scope: str, month: str) -> tuple[int, int, int]:
        row = conn.execute(
            "SELECT cost_nanos, unpriced_calls, unpriced_nanos FROM months "
            "WHERE scope = ? AND month = ?", (scope, month)
        ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    def counters(self, scope: str, now: float, month: str) -> Counters:
        self._caught_up("counters")

        def run() -> Counters:
            conn = self._conn()
            minute = self._sums(conn, scope, _MIN, now)
            day = self._sums(conn, scope, _DAY, now)
            row = conn.execute(
                "SELECT cost_nanos, unpriced_calls, unpriced_nanos, reset_at FROM months "
                "WHERE scope = ? AND month = ?",
                (scope, totals_key(scope, month))).fetchone() or (0, 0, 0, 0.0)
            return Counters(
                requests_minute=minute[0], tokens_minute=minute[1],
                requests_day=day[0], tokens_day=day[1],
                cost_month_nanos=int(row[0]),
                calls_minute=minute[2], errors_minute=minute[3],
                rate_limited_minute=minute[4],
                unpriced_month_calls=int(row[1]), unpriced_month_nanos=int(row[2]),
                budget_reset_at=float(row[3]),
            )

        return self._guard(run, what="counters")


    def breakdown(self, scope: str, month: str, by: Breakdown) -> dict[str, Aggregate]:
        self._caught_up("breakdown")

        def run() -> dict[str, Aggregate]:
            rows = self._conn().execute(
                "SELECT name, requests, errors, tokens, input_tokens, output_tokens, cost_nanos, "
                "unpriced, unpriced_nanos, cached_input_tokens, cache_write_tokens, "
                "reasoning_tokens FROM breakdowns "
                "WHERE scope = ? AND month = ? AND by_kind = ?",
                (scope, totals_key(scope, month), by),
            ).fetchall()
            return {row[0]: Aggregate(*row[1:]) for row in rows}

        return self._guard(run, what="breakdown")


    def recent(self, scope: str, n: int) -> list[UsageRecord]:
        if n <= 0:
            return []
        self._caught_up("recent")

        def run() -> list[UsageRecord]:
            rows = self._conn().execute(
                "SELECT h.record FROM history_scopes s JOIN history h ON h.id = s.id "
                "WHERE s.scope = ? ORDER BY s.id DESC LIMIT ?",
                (scope, n),
            ).fetchall()
            return [decode(row[0]) for row in rows]

        return self._guard(run, what="recent")


    def workspaces(self) -> list[str]:
        self._caught_up("workspaces")

        def run() -> list[str]:
            rows = self._conn().execute(
                "SELECT DISTINCT scope FROM months WHERE scope >= 'workspace:' "
                "AND scope < 'workspace;' ORDER BY scope"
            ).fetchall()
            return sorted(row[0][len("workspace:"):] for row in rows)

        return self._guard(run, what="workspaces")


    def reprice(self, since: float, price: Repricer, *, dry_run: bool = False) -> RepriceReport:
        """Price again every record since ``since`` (epoch seconds), with ``price(record) ->
        (cost, source, charge_nanos, unpriced_nanos)``: the record's cost and source, what the
        budget is charged, and the part of that charged for an unpriced model. The month
        totals and the breakdowns move by the difference, in one transaction; the records
        keep their new cost. ``dry_run`` reports without writing."""
        self._caught_up("reprice")

        def run() -> RepriceReport:
            report = RepriceReport()
            batch = _Batch()
            updates: list[tuple[str, int, int, str, str, int]] = []
            with self._transaction() as conn:
                rows = conn.execute(
                    "SELECT id, record, charge_nanos, unpriced_nanos, month, day, at FROM "
                    "history WHERE at >= ? ORDER BY id", (since,)).fetchall()
                resets = {(scope, month): float(at) for scope, month, at in conn.execute(
                    "SELECT scope, month, reset_at FROM months WHERE reset_at > 0")}
                scopes_of: dict[int, list[str]] = {}
                for row_id, scope in conn.execute(
                        "SELECT s.id, s.scope FROM history_scopes s JOIN history h ON h.id = "
                        "s.id WHERE h.at >= ?", (since,)):
                    scopes_of.setdefault(row_id, []).append(scope)
                for row_id, text, old_charge, old_unpriced, month, day, at in rows:
                    record = UsageRecord.from_dict(json.loads(text))
                    stamp = record.timestamp
                    month = month or (stamp.strftime("%Y-%m") if stamp else "")
                    day = day or (stamp.strftime("%Y-%m-%d") if stamp else "")
                    if old_charge is None:  # written before charges were kept: its cost
                        old_charge = 0 if record.cost is None else _nanos(record.cost)
                        old_unpriced = 0
                    if _provided(record):
                        # A cost the caller or litellm gave is kept as it was: the book's
                        # price is not the bill it reported.
                        report.records += 1
                        report.add(month, old_charge, old_charge)
                        continue
                    cost, source, charge, unpriced = price(record.with_cost(None, None))
                    if record.invalid_fields and charge < old_charge:
                        # Counts that could not be trusted settled at least at their
                        # reservation: a new price never takes that floor back.
                        if cost is None:
                            unpriced += old_charge - charge
                        charge = old_charge
                    report.records += 1
                    report.add(month, old_charge, charge)
                    if charge == old_charge and unpriced == old_unpriced and (
                            cost == record.cost):
                        continue
                    report.changed += 1
                    was_unpriced = record.cost is None
                    now_unpriced = cost is None
                    priced_delta = (charge - unpriced) - (old_charge - old_unpriced)
                    for scope in scopes_of.get(row_id, []):
                        # A call from before its period's budget reset no longer counts in
                        # the period's charge: its new price moves the breakdowns only.
                        totals = totals_key(scope, month)
                        if at > resets.get((scope, totals), 0.0):
                            batch.month(scope, totals, charge - old_charge,
                                        int(now_unpriced) - int(was_unpriced),
                                        unpriced - old_unpriced)
                        if is_budget_scope(scope):
                            continue  # a day or week budget keeps no breakdowns
                        for by, name in (("model", record.model),
                                         ("api_method", record.api_method), ("day", day)):
                            key = (scope, totals, by,
                                   self._name(conn, scope, totals, by, name))
                            row = batch.breakdowns.setdefault(key, [0] * 11)
                            row[5] += priced_delta
                            row[6] += int(now_unpriced) - int(was_unpriced)
                            row[7] += unpriced - old_unpriced
                    updated = record.with_cost(cost, source)
                    updates.append((json.dumps(updated.to_dict(), default=str), charge,
                                    unpriced, month, day, row_id))
                if not dry_run:
                    batch.apply(conn)
                    conn.executemany(
                        "UPDATE history SET record = ?, charge_nanos = ?, unpriced_nanos = ?, "
                        "month = ?, day = ? WHERE id = ?", updates)
                else:
                    conn.execute("SELECT 1")  # nothing written; the transaction ends
            return report

        return self._guard(run, what="reprice")

    def history_count(self) -> int:
        """How many records the history holds."""
        self._caught_up("history_count")
        row = self._guard(
            lambda: self._conn().execute("SELECT COUNT(*) FROM history").fetchone(),
            what="history_count",
        )
        return int(row[0])

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, stop the writer and close every connection.

        A record that still meets a transient error after a few attempts while closing is
        dropped and counted in :attr:`dropped_records` (logged), so ``close()`` always ends.
        ``timeout`` bounds the wait for the writer (it may be waiting on another process's
        lock); what it has not written by then is logged as lost.
        """
        if self._closed:
            return
        with self._lock:
            self._stopping = True
            self._has_work.notify_all()
        if self._writer is not None:
            self._writer.join(timeout)
            if self._writer.is_alive():
                with self._lock:
                    left = self._enqueued - self._processed
                self.dropped_records += left
                logger.error("quota-hooks: closing %s: %d queued record(s) not written within "
                             "%gs were lost", self.path, left, timeout)
                self._closed = True
                return  # the writer's connection is its own; it goes with the process
        with self._conn_lock:
            self._closed = True  # no operation starts from here on (see _guard)
            self._idle.wait_for(lambda: self._busy == 0, timeout=_CLOSE_WAIT)
            busy = self._busy
            connections = list(self._connections)
            self._connections = weakref.WeakSet()
        if busy:  # their connections go with their threads, never closed under a query
            logger.warning("quota-hooks: closing %s: %d operation(s) still under way after "
                           "%gs; their connections are left to their threads", self.path,
                           busy, _CLOSE_WAIT)
            return
        for owned in connections:
            owned.close()


    def _guard(self, fn: Callable[..., _T], *args: Any, what: str = "") -> _T:
        with self._conn_lock:
            if self._closed:
                raise StorageError(f"{self!r} is closed")
            self._busy += 1
        try:
            return fn(*args)
        except StorageError:
            raise
        except sqlite3.Error as exc:
            raise StorageError(
                f"SQLite store {str(self.path)!r}: {what or 'operation'} failed: {exc}"
            ) from exc
        finally:
            with self._conn_lock:
                self._busy -= 1
                if not self._busy:
                    self._idle.notify_all()
