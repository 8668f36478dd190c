"""`MemoryStore`: usage in this process's memory. Fast, exact, gone when the process ends.

Memory per scope is bounded and independent of traffic: fixed rings of buckets for the windows,
a capped list of recent records, and per-month totals for the last ``months_kept`` months.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from .._fork import renew_after_fork
from ..usage import UsageRecord, fast_constructor
from ..windows import DAY, MINUTE, RollingCounter, buckets
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
    budget_scope_parts,
    first_denial,
    is_budget_scope,
    totals_key,
)

__all__ = ["SCOPE_RECENT", "MemoryStore"]

#: Records a scope other than a workspace (``user:u-1``, ``team:ml``) keeps for ``recent()``.
SCOPE_RECENT = 10
#: The day (and the week) budget scopes kept per scope: this period's and the one before.
PERIODS_KEPT = 2

# Fields of the minute ring: requests, tokens, calls, errors, rate_limited. Day ring: the first two.


class _Totals:
    __slots__ = (
        "cache_write_tokens",
        "cached_input_tokens",
        "cost_nanos",
        "errors",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "requests",
        "tokens",
        "unpriced",
        "unpriced_nanos",
    )

    def __init__(self) -> None:
        self.requests = self.errors = self.tokens = 0
        self.input_tokens = self.output_tokens = self.cost_nanos = self.unpriced = 0
        self.unpriced_nanos = self.cached_input_tokens = self.cache_write_tokens = 0
        self.reasoning_tokens = 0

    @staticmethod
    def add(rows: Iterable[_Totals], record: UsageRecord, delta: UsageDelta,
            unpriced: bool) -> None:
        """Count one call in each of ``rows`` (the record's fields read once)."""
        errors = 0 if record.success else 1
        tokens, inputs, outputs = record.total_tokens, record.input_tokens, record.output_tokens
        cost, unpriced_nanos = delta.cost_nanos - delta.unpriced_nanos, delta.unpriced_nanos
        cached, written = record.cached_input_tokens, record.cache_write_tokens
        reasoning = record.reasoning_tokens
        for row in rows:
            row.requests += 1
            row.errors += errors
            row.tokens += tokens
            row.input_tokens += inputs
            row.output_tokens += outputs
            row.cost_nanos += cost
            row.unpriced += unpriced
            row.unpriced_nanos += unpriced_nanos
            row.cached_input_tokens += cached
            row.cache_write_tokens += written
            row.reasoning_tokens += reasoning

    def freeze(self) -> Aggregate:
        return Aggregate(
            requests=self.requests,
            errors=self.errors,
            tokens=self.tokens,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_nanos=self.cost_nanos,
            unpriced=self.unpriced,
            unpriced_nanos=self.unpriced_nanos,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )


def _names(table: dict[tuple[str, str, str], _Totals], month: str, by: str) -> int:
    """How many names of kind ``by`` a scope keeps for ``month``: counted only for a table
    that could hold the cap (it runs when a name is new, not per call)."""
    if len(table) < MAX_BREAKDOWN_NAMES:
        return len(table)
    return sum(1 for key in table if key[1] == by and key[0] == month)


class _Scope:
    __slots__ = ("breakdowns", "capacity", "day", "minute", "months", "period", "recent",
                 "resets")

    def __init__(self, capacity: int, period: str | None) -> None:
        self.capacity = capacity
        """Records kept for ``recent()``."""
        self.period = period
        """A day or week budget's scope: its period, under which it keeps its cost (and
        nothing else); None for every other scope."""
        self.minute = RollingCounter(MINUTE, 5)
        self.day = RollingCounter(DAY, 2)
        self.months: dict[str, list[int]] = {}
        """Per budget month: [cost charged, unpriced calls, unpriced charge] (nano-dollars)."""
        self.resets: dict[str, float] = {}
        """When each budget month was last reset."""
        # Per month, per kind ("model", "api_method", "day"), per name.
        # Every breakdown of every month in one dict, keyed (month, "model", name) ...: one
        # dict, not one per month and kind (an idle workspace stays a few KB).
        self.breakdowns: dict[tuple[str, str, str], _Totals] = {}

        # (record, cost, price source, when), oldest first: a list trimmed as it grows (a
        # deque costs 600 bytes even with one entry); priced copies are made when read.
        self.recent: list[tuple[UsageRecord, Decimal | None, str | None, float]] = []


_CLAIMS_SWEEP_AT = 10_000


def _priced(record: UsageRecord, cost: Decimal | None, source: str | None,
            when: float) -> UsageRecord:
    """A kept record as ``recent()`` returns it: priced, and with its timestamp."""
    stamp = None if record.timestamp is not None else datetime.fromtimestamp(when, UTC)
    if stamp is None and record.cost is cost and record.price_source == source:
        return record
    return record.with_cost(cost, source, stamp)
_NO_MONTH = (0, 0, 0)
_NO_TOTALS = (0, 0)
_new_reservation = fast_constructor(Reservation)


class MemoryStore:
    """The in-process :class:`~quota_hooks.storage.base.Store`. Thread-safe and task-safe.

    Args:
        recent_capacity: records kept per workspace for ``recent()`` (other scopes, a
            workspace's users and tags, keep their last :data:`SCOPE_RECENT`: a workspace
            with 20,000 end users must not keep 100 records for each).
        months_kept: budget months whose totals and breakdowns are kept per scope.

    It does no blocking I/O, so its async face (:func:`~quota_hooks.storage.base.as_async`)
    calls it inline.
    """

    blocking = False

    def __init__(self, *, recent_capacity: int = 100, months_kept: int = 13) -> None:
        if recent_capacity < 1:
            raise ValueError(f"recent_capacity must be at least 1, got {recent_capacity!r}")
        self._recent_capacity = recent_capacity
        self._scope_recent = min(recent_capacity, SCOPE_RECENT)
        self._months_kept = months_kept
        self._scopes: dict[str, _Scope] = {}
        # A day or week budget's scopes, per scope and kind (week or not), oldest first.
        self._periods: dict[tuple[str, bool], list[str]] = {}
        # Pending reservations in the order they were made, which is (nearly) the order they
        # expire in: reaping pops from the front, a settle deletes its own entry at once.
        self._pending: dict[str, Reservation] = {}
        # Reservation ids: unique per store (a counter is cheaper than a uuid4 per call).
        self._ids = itertools.count(1)
        self._id_prefix = f"m{uuid.uuid4().hex[:12]}-"
        self._claims: dict[str, float] = {}
        self._policies = PolicyTable(0, {})
        self._alerts: dict[str, deque[str]] = {}
        self._lock = threading.Lock()
        renew_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """A child process after ``fork()``: a new lock (another thread may have held this
        one at the fork). The child's usage is its copy of the parent's, counted on its own
        from now on."""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(scopes={len(self._scopes)})"

    # ------------------------------------------------------------------ writes
    def commit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        record, delta, now = entry.record, entry.delta, entry.now
        counts = [delta.requests, delta.tokens, delta.calls, delta.errors, delta.rate_limited]
        when, month, cost = entry.when, entry.month, delta.cost_nanos
        minute_bucket, day_bucket = now_buckets = buckets(when)
        names = (("model", record.model), ("api_method", record.api_method),
                 ("day", entry.day_name))
        unpriced = entry.unpriced
        kept = (record, entry.cost, entry.price_source, when)
        with self._lock:
            if self._pending:
                self._reap(now)
            pending = None if reservation is None else self._pending.pop(reservation.id, None)
            if pending is not None and pending.expires_at <= now:
                pending = None  # past its ttl: forgotten, what it held stays counted
            if pending is not None:
                held = pending.delta
                if (pending.scopes == entry.scopes and pending.month == month
                        and buckets(pending.at) == now_buckets):
                    # The usual case: settle in the reservation's own buckets, by difference.
                    counts[0] -= held.requests
                    counts[1] -= held.tokens
                    cost -= held.cost_nanos
                else:
                    self._undo(pending, now)
            day_counts = counts[:2]
            unpriced_calls, unpriced_nanos = int(unpriced), delta.unpriced_nanos
            for key in entry.scopes:
                scope = self._scopes.get(key) or self._scope(key)
                if scope.period is not None:  # a day or week budget: its cost is all it keeps
                    self._add_cost(scope, scope.period, cost, unpriced_calls, unpriced_nanos)
                    continue
                scope.minute.add(minute_bucket, counts, now)
                if day_counts[0] or day_counts[1]:  # nothing when it settles at its estimate
                    scope.day.add(day_bucket, day_counts, now)
                if self._add_cost(scope, month, cost, unpriced_calls,
                                  unpriced_nanos):  # False: older than every month kept
                    _Totals.add(self._rows(scope.breakdowns, month, names), record, delta,
                                unpriced)
                recent = scope.recent
                recent.append(kept)
                capacity = scope.capacity
                if len(recent) > capacity + capacity // 3:  # trimmed in steps, not per call
                    del recent[: len(recent) - capacity]

    def reserve(
        self,
        scopes: Sequence[str],
        delta: UsageDelta,
        limits: Mapping[str, Limits],
        now: float,
        month: str,
        ttl: float,
    ) -> Reservation | Denial:
        with self._lock:
            if self._pending:
                self._reap(now)
            for key in scopes:
                scope_limits = limits.get(key)
                if scope_limits is None:
                    continue
                denial = self._check(self._scopes.get(key) or self._scope(key), delta,
                                     scope_limits, now, month, key)
                if denial is not None:
                    return denial
            reservation = _new_reservation(  # positional: a keyword call costs twice as much
                f"{self._id_prefix}{next(self._ids)}",  # id
                tuple(scopes),
                delta,
                now,  # at
                month,
                now + ttl,  # expires_at
            )
            self._apply(reservation, sign=1, now=now)
            self._pending[reservation.id] = reservation
            return reservation


    def release(self, reservation: Reservation, now: float) -> bool:
        with self._lock:
            pending = self._pending.pop(reservation.id, None)
            if pending is None or pending.expires_at <= now:  # past its ttl: forgotten, what
                return False  # it held stays counted (as a settle and every store have it)
            self._undo(pending, now)
            return True


    # ------------------------------------------------------------------ reads
    def counters(self, scope: str, now: float, month: str) -> Counters:
        with self._lock:
            state = self._scopes.get(scope)
            if state is None:
                return Counters()
            requests, tokens, calls, errors, limited = state.minute.totals(now)
            requests_day, tokens_day = state.day.totals(now)
            month = totals_key(scope, month)
            cost, unpriced_calls, unpriced_nanos = state.months.get(month, _NO_MONTH)
            reset_at = state.resets.get(month, 0.0)
            return Counters(
                requests_minute=requests,
                tokens_minute=tokens,
                requests_day=requests_day,
                tokens_day=tokens_day,
                cost_month_nanos=cost,
                calls_minute=calls,
                errors_minute=errors,
                rate_limited_minute=limited,
                unpriced_month_calls=unpriced_calls,
                unpriced_month_nanos=unpriced_nanos,
                budget_reset_at=reset_at,
            )


    def breakdown(self, scope: str, month: str, by: Breakdown) -> dict[str, Aggregate]:
        with self._lock:
            state = self._scopes.get(scope)
            if state is None:
                return {}
            month = totals_key(scope, month)
            return {key[2]: totals.freeze() for key, totals in state.breakdowns.items()
                    if key[0] == month and key[1] == by}


    def recent(self, scope: str, n: int) -> list[UsageRecord]:
        with self._lock:
            state = self._scopes.get(scope)
            if state is None or n <= 0:
                return []
            entries = state.recent[-min(n, state.capacity):][::-1]
        return [_priced(*entry) for entry in entries]


    def workspaces(self) -> list[str]:
        with self._lock:
            keys = list(self._scopes)
        return sorted(key[len("workspace:") :] for key in keys if key.startswith("workspace:"))


    def claim(self, key: str, now: float, ttl: float) -> bool:
        with self._lock:
            claims = self._claims
            held = claims.get(key)
            if held is not None and held > now:
                return False
            if len(claims) > _CLAIMS_SWEEP_AT:
                for stale in [k for k, until in claims.items() if until <= now]:
                    del claims[stale]
            claims[key] = now + ttl
            return True


    # ------------------------------------------------------------------ control plane
    def policies(self, known: int = -1) -> PolicyTable | None:
        table = self._policies  # replaced whole on every change: read without the lock
        return None if table.version == known else table

    def put_policies(self, changes: Mapping[str, str | None], now: float, *,
                     only_if_new: bool = False, expect_version: int | None = None) -> int | None:
        with self._lock:
            table = self._policies
            if (only_if_new and table.version) or (
                    expect_version is not None and table.version != expect_version):
                return None
            version = table.version + 1
            policies = dict(table.policies)
            for key, document in changes.items():
                if document is None:
                    policies.pop(key, None)
                else:
                    policies[key] = StoredPolicy(document, version, now)
            self._policies = PolicyTable(version, policies)
            return version

    def append_alert(self, scope: str, document: str, now: float, keep: int) -> None:
        with self._lock:
            kept = self._alerts.get(scope)
            if kept is None or kept.maxlen != keep:
                kept = self._alerts[scope] = deque(kept or (), maxlen=max(1, keep))
            kept.append(document)

    def alert_history(self, scope: str, n: int) -> list[str]:
        with self._lock:
            kept = self._alerts.get(scope)
            return [] if kept is None or n <= 0 else list(kept)[-n:][::-1]

    def reset_budget(self, scope: str, month: str, now: float) -> int | None:
        with self._lock:
            self._reap(now)
            state = self._scopes.get(scope)
            month = totals_key(scope, month)
            if state is None or month not in state.months:
                return None
            held = sum(r.delta.cost_nanos for r in self._pending.values()
                       if scope in r.scopes and totals_key(scope, r.month) == month
                       and r.expires_at > now)
            totals = state.months[month]
            taken = totals[0] - held
            totals[:] = [held, 0, 0]  # the charge, and of it the unpriced calls' (none now)
            state.resets[month] = now
            return taken

    def pending(self) -> int:
        """Reservations not yet committed, released or expired."""
        with self._lock:
            return len(self._pending)

    def close(self, timeout: float | None = None) -> None:
        """Nothing to release: memory goes with the process."""

    # ------------------------------------------------------------------ internals (locked)
    def _scope(self, key: str) -> _Scope:
        scope = self._scopes.get(key)
        if scope is None:
            budget = is_budget_scope(key)
            capacity = self._recent_capacity if key.startswith("workspace:") else (
                self._scope_recent)
            scope = self._scopes[key] = _Scope(
                capacity, budget_scope_parts(key)[0] if budget else None)
            if budget:
                self._forget_periods(key)
        return scope

    @staticmethod
    def _rows(table: dict[tuple[str, str, str], _Totals], month: str,
              names: Iterable[tuple[str, str]]) -> list[_Totals]:
        """The breakdown rows of ``month`` that a call of these names counts in (made when
        new; a name too many is counted under :data:`OTHER`, not kept by name)."""
        rows = []
        for by, name in names:
            totals = table.get((month, by, name))
            if totals is None:
                if by != "day" and _names(table, month, by) >= MAX_BREAKDOWN_NAMES:
                    name = OTHER
                    totals = table.get((month, by, name))
                if totals is None:
                    totals = table[(month, by, name)] = _Totals()
            rows.append(totals)
        return rows

    def _forget_periods(self, key: str) -> None:
        """A day or week budget's scope was made: the same scope's older ones of the same
        kind are forgotten but the one before (a call reserved just before midnight may
        still settle there), so a process that runs for a year keeps a few per scope, not
        one per day."""
        period, parent = budget_scope_parts(key)
        kind = "W" in period  # a week's name, 2026-W10; a day's, 2026-03-05
        kept = self._periods.setdefault((parent, kind), [])
        kept.append(key)
        if len(kept) > PERIODS_KEPT:
            kept.sort()
            old = [k for k in kept[:-PERIODS_KEPT] if k != key]  # never the one in use
            for name in old:
                self._scopes.pop(name, None)
            kept[:] = [k for k in kept if k not in old]

    def _add_cost(
        self, scope: _Scope, month: str, nanos: int, unpriced: int = 0, unpriced_nanos: int = 0
    ) -> bool:
        """Add to the month's totals; False for a month older than every month kept (not
        kept either)."""
        months = scope.months
        totals = months.get(month)
        if totals is None:
            if len(months) >= self._months_kept:
                oldest = min(months)
                if month < oldest:
                    return False
                del months[oldest]
                scope.resets.pop(oldest, None)
                for key in [k for k in scope.breakdowns if k[0] == oldest]:
                    del scope.breakdowns[key]
            totals = months[month] = [0, 0, 0]
        totals[0] += nanos
        totals[1] += unpriced
        totals[2] += unpriced_nanos
        return True

    def _apply(self, reservation: Reservation, *, sign: int, now: float) -> None:
        delta = reservation.delta
        counts = (sign * delta.requests, sign * delta.tokens, 0, 0, 0)
        day_counts = counts[:2]
        minute_bucket, day_bucket = buckets(reservation.at)
        month, nanos = reservation.month, sign * delta.cost_nanos
        for key in reservation.scopes:
            scope = self._scopes.get(key) or self._scope(key)
            if scope.period is None:
                scope.minute.add(minute_bucket, counts, now)
                scope.day.add(day_bucket, day_counts, now)
            self._add_cost(scope, scope.period or month, nanos)

    def _undo(self, reservation: Reservation, now: float) -> None:
        self._apply(reservation, sign=-1, now=now)

    def _reap(self, now: float) -> None:
        """Forget reservations past their ttl. What they held stays counted: a call that was
        never recorded (a stream nobody closed, a crashed process) used its estimate."""
        pending = self._pending
        while pending:
            rid = next(iter(pending))
            if pending[rid].expires_at > now:
                return
            del pending[rid]

    def _check(
        self,
        scope: _Scope,
        delta: UsageDelta,
        limits: Limits,
        now: float,
        month: str,
        key: str,
    ) -> Denial | None:
        windowless = scope.period is not None  # a day or week budget: its cost is all it has
        return first_denial(
            key, limits, delta, now,
            minute=_NO_TOTALS if windowless else scope.minute.totals(now),
            day=_NO_TOTALS if windowless else scope.day.totals(now),
            spent=lambda: scope.months.get(scope.period or month, _NO_MONTH)[0],
            first_bucket=lambda window, field: (
                scope.minute if window is MINUTE else scope.day).first_bucket_with(now, field),
        )
