"""The `Store` protocol: where usage lives.

A store keeps, per scope (``"workspace:ws-1"``, ``"team:ml"`` ...):

* rolling counters for the per-minute and per-day windows and the cost of each budget month,
* breakdowns of each month by model and by API method,
* the most recent records, and pending reservations.

A :class:`ControlStore` (every built-in backend is one) also keeps what every process sharing
it must agree on: the policy table, versioned, and each workspace's alert history.

Stores know numbers, not policy: the manager turns a policy into :class:`Limits` and asks the
store to check them and reserve atomically (:meth:`Store.reserve`), then replaces the estimate
with the actual usage exactly once (:meth:`Store.commit`). Status reads never scan history.

:class:`Store` is the sync protocol, :class:`AsyncStore` the async one (like httpx's
``BaseTransport`` and ``AsyncBaseTransport``); :func:`as_async` gives a sync-only store its
async face, on worker threads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, cast, runtime_checkable

import anyio.to_thread

from ..metrics import BUDGET, CHECK_ORDER
from ..usage import UsageRecord, bounded
from ..windows import DAY, MINUTE, Window, day_key

__all__ = [
    "BUDGET_SCOPE_PREFIX",
    "MAX_BREAKDOWN_NAMES",
    "OTHER",
    "Aggregate",
    "AsyncControlStore",
    "AsyncStore",
    "Breakdown",
    "ControlStore",
    "Counters",
    "Denial",
    "Limits",
    "PolicyTable",
    "Reservation",
    "Store",
    "StoredPolicy",
    "UsageDelta",
    "UsageEntry",
    "as_async",
    "budget_scope",
    "budget_scope_parts",
    "first_denial",
    "is_budget_scope",
    "scope_key",
    "totals_key",
    "workspace_scope",
]

Breakdown = Literal["model", "api_method", "day"]
"""What a month's totals can be broken down by: model, API method, or calendar day."""

#: Distinct models (and, apart, API methods) a scope's month keeps by name; the calls of
#: any more are counted under :data:`OTHER`, so that no traffic can make a breakdown, a status
#: read or a WebSocket update grow without bound.
MAX_BREAKDOWN_NAMES = 200
#: The breakdown row of the names beyond :data:`MAX_BREAKDOWN_NAMES`.
OTHER = "(other)"


def workspace_scope(workspace_id: str) -> str:
    """The scope key of a workspace (its name bounded and escaped, as in records)."""
    return f"workspace:{bounded(workspace_id)}"


#: The scope kinds the library's own scopes use: a caller's scope of one of these kinds is
#: kept apart (:func:`scope_key`).
_OWN_KINDS = frozenset({"workspace", "budget"})


def scope_key(kind: str, value: str) -> str:
    """The store key of a caller's scope ``kind``/``value``: ``"team:ml"``.

    The kinds of the library's own scopes (``workspace``, and ``budget`` for a period
    budget's, :func:`budget_scope`) get one more leading ``_`` (``"_budget:q1"``, and
    ``"__budget:x"`` for a kind ``"_budget"``), so that no caller's scope, say a LiteLLM tag,
    can be charged as another workspace or as a budget period.
    """
    if kind.lstrip("_") in _OWN_KINDS:
        kind = "_" + kind
    return f"{kind}:{value}"


#: How a period budget's scope starts: ``"budget:<period>@<scope>"``.
BUDGET_SCOPE_PREFIX = "budget:"


def budget_scope(scope: str, period: str) -> str:
    """The scope that keeps ``scope``'s charge in one day or week budget period
    (``period`` is its name, ``"2026-03-05"`` or ``"2026-W10"``):
    ``"budget:2026-03-05@workspace:acme"``.

    A day or week budget is enforced as a scope of its own, reserved and committed with the
    call's other scopes in the same atomic step, so every store holds it as it holds the
    month's budget. Its totals are its period's: a store keeps them under ``period`` where
    it keeps another scope's under the month (:func:`totals_key`), so a week that spans two
    months is one total.
    """
    return f"{BUDGET_SCOPE_PREFIX}{period}@{scope}"


_BUDGET_SCOPE = re.compile(r"budget:(\d{4}-(?:\d{2}-\d{2}|W\d{2}))@")


def totals_key(scope: str, month: str) -> str:
    """The period whose totals ``scope`` keeps where the call's budget ``month`` is asked
    for: the month, or a period budget scope's own period (:func:`budget_scope`). Every
    store reads and writes a scope's cost and breakdowns under this key. (No caller's scope
    has that shape: :func:`scope_key`.)
    """
    if scope.startswith(BUDGET_SCOPE_PREFIX):
        period = _period_of(scope)
        if period is not None:
            return period
    return month


@functools.lru_cache(maxsize=4096)
def _period_of(scope: str) -> str | None:
    found = _BUDGET_SCOPE.match(scope)
    return None if found is None else found.group(1)


def budget_scope_parts(scope: str) -> tuple[str, str]:
    """A period budget's scope as its period and the scope it budgets:
    ``("2026-03-05", "workspace:acme")``. A ValueError for any other name."""
    found = _BUDGET_SCOPE.match(scope)
    if found is None:
        raise ValueError(f"not a period budget's scope: {scope!r}")
    return found.group(1), scope[found.end():]


def is_budget_scope(scope: str) -> bool:
    """True for a period budget's scope (:func:`budget_scope`)."""
    return scope.startswith(BUDGET_SCOPE_PREFIX) and _period_of(scope) is not None


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """Counts that one call adds to every window of a scope."""

    requests: int = 0
    """Requests that count toward rpm/rpd (unmetered methods add 0)."""
    tokens: int = 0
    cost_nanos: int = 0
    calls: int = 0
    """Every call, metered or not."""
    errors: int = 0
    """Failed calls other than rate limiting."""
    rate_limited: int = 0
    """Calls the provider answered with 429."""
    unpriced_nanos: int = 0
    """The part of ``cost_nanos`` charged at the price book's fallback price, for a model
    without a price (the policy's ``unpriced="fallback"``)."""


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One record as the store receives it: the record, its scopes, what it adds, and when.

    ``cost``/``price_source`` are the manager's pricing of the record (``cost`` is ``None`` when
    the model could not be priced); the record itself is left as the adapter made it.
    """

    record: UsageRecord
    scopes: tuple[str, ...]
    delta: UsageDelta
    now: float
    month: str
    cost: Decimal | None = None
    price_source: str | None = None
    day: str = ""
    """The calendar day (``"YYYY-MM-DD"``, in the policy's zone) of the day breakdown;
    empty: the UTC day of :attr:`when`."""
    at: float | None = None
    """When the call happened (epoch seconds, never after ``now``): its minute and day
    buckets; ``None`` is ``now``. A record older than a window counts only where it belongs
    (its month, its day), never in today's windows."""

    @property
    def when(self) -> float:
        """:attr:`at`, or ``now`` when it is not set."""
        return self.now if self.at is None else min(self.at, self.now)

    @property
    def day_name(self) -> str:
        """:attr:`day`, or the UTC day of :attr:`when` when it is empty."""
        return self.day or day_key(self.when)

    @property
    def unpriced(self) -> bool:
        """True when the record's cost is unknown."""
        return self.cost is None

    def priced_record(self) -> UsageRecord:
        """The record as stores keep it: ``cost``, ``price_source`` and ``timestamp`` filled
        in."""
        record = self.record
        stamp = None
        if record.timestamp is None:
            stamp = datetime.fromtimestamp(self.when, UTC)
        elif record.cost is self.cost and record.price_source == self.price_source:
            return record
        return record.with_cost(self.cost, self.price_source, stamp)


@dataclass(frozen=True, slots=True)
class Counters:
    """A scope's totals at one instant."""

    requests_minute: int = 0
    tokens_minute: int = 0
    requests_day: int = 0
    tokens_day: int = 0
    cost_month_nanos: int = 0
    calls_minute: int = 0
    errors_minute: int = 0
    rate_limited_minute: int = 0
    unpriced_month_calls: int = 0
    """Calls in the month whose model had no price."""
    unpriced_month_nanos: int = 0
    """The part of ``cost_month_nanos`` charged at the fallback price for those calls."""
    budget_reset_at: float = 0.0
    """When the month's budget was last reset (epoch seconds; 0: never)."""
    cost_day_nanos: int = 0
    """What the scope's day budget counts today (its own scope's totals, filled in by
    :func:`quota_hooks._core.with_budgets`; a store's ``counters`` leaves it 0)."""
    cost_week_nanos: int = 0
    """What the scope's week budget counts this week (as :attr:`cost_day_nanos`)."""
    day_reset_at: float = 0.0
    """When today's day budget was last reset (0: never)."""
    week_reset_at: float = 0.0
    """When this week's week budget was last reset (0: never)."""


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Totals for one model, API method or day over a month.

    ``cost_nanos`` is what priced calls cost; the calls without a price are counted in
    ``unpriced``, and what the budget charged them (the fallback price) in ``unpriced_nanos``.
    """

    requests: int = 0
    errors: int = 0
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nanos: int = 0
    unpriced: int = 0
    unpriced_nanos: int = 0
    cached_input_tokens: int = 0
    """Of ``input_tokens``, read from a prompt cache."""
    cache_write_tokens: int = 0
    """Of ``input_tokens``, written to a prompt cache."""
    reasoning_tokens: int = 0
    """Of ``output_tokens``, spent reasoning."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits a reservation must fit in, for one scope. ``None`` is unlimited."""

    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    budget_nanos: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """Usage held against limits before a call, replaced by the actual usage after it."""

    id: str
    scopes: tuple[str, ...]
    delta: UsageDelta
    at: float
    month: str
    expires_at: float
    limits: Mapping[str, Limits] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a reservation was refused: the first limit it did not fit."""

    scope: str
    limit: str
    used: int
    maximum: int
    retry_after: float | None


def first_denial(
    scope: str,
    limits: Limits,
    delta: UsageDelta,
    now: float,
    *,
    minute: Sequence[int],
    day: Sequence[int],
    spent: Callable[[], int],
    first_bucket: Callable[[Window, int], int | None],
) -> Denial | None:
    """The first limit of ``scope`` that ``delta`` does not fit, or None: the one set of rules
    every store applies (the Redis scripts mirror it in Lua).

    ``minute``/``day`` are the window totals ``(requests, tokens)`` at ``now``; ``spent()``
    the month's cost in nano-dollars; ``first_bucket(window, field)`` the oldest in-window
    bucket whose requests (field 0) or tokens (field 1) are not zero, for ``retry_after``.
    A call that could never fit (it alone exceeds the limit) gets no ``retry_after``.
    """
    for metric in CHECK_ORDER:
        maximum: int | None = getattr(limits, metric.name)
        field_index = 0 if metric.counts == "requests" else 1
        wanted = delta.requests if field_index == 0 else delta.tokens
        if metric.window == "minute":
            window, used = MINUTE, minute[field_index]
        else:
            window, used = DAY, day[field_index]
        if maximum is None or not wanted or used + wanted <= maximum:
            continue
        retry_after: float | None = None
        if wanted <= maximum:
            first = first_bucket(window, field_index)
            if first is not None:
                retry_after = max(0.0, window.expires_at(first) - now)
        return Denial(scope, metric.name, used, maximum, retry_after)
    budget = limits.budget_nanos
    if budget is not None and (delta.cost_nanos or delta.requests):
        cost = spent()
        if cost + delta.cost_nanos > budget or cost >= budget:
            return Denial(scope, BUDGET.name, cost, budget, None)
    return None


@runtime_checkable
class Store(Protocol):
    """Storage of usage counters, breakdowns, recent records and reservations (sync).

    A store that does no blocking I/O (it only touches memory) sets ``blocking = False``:
    :func:`as_async` then calls it inline rather than on a worker thread.
    """

    def commit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        """Add a record's usage to every scope, window and breakdown.

        With a ``reservation``, its estimate is removed first if it is still pending (it is
        removed at most once, whoever commits or however often).
        """
        ...

    def reserve(
        self,
        scopes: Sequence[str],
        delta: UsageDelta,
        limits: Mapping[str, Limits],
        now: float,
        month: str,
        ttl: float,
    ) -> Reservation | Denial:
        """Check every limit of every scope and hold ``delta`` in one atomic step."""
        ...

    def release(self, reservation: Reservation, now: float) -> bool:
        """Drop a pending reservation (the call never happened). False if already gone."""
        ...

    def counters(self, scope: str, now: float, month: str) -> Counters:
        """The scope's window totals at ``now`` and its cost in ``month``."""
        ...

    def breakdown(self, scope: str, month: str, by: Breakdown) -> dict[str, Aggregate]:
        """The scope's usage in ``month`` per model, API method or day."""
        ...

    def recent(self, scope: str, n: int) -> list[UsageRecord]:
        """The scope's last ``n`` records, newest first."""
        ...

    def workspaces(self) -> list[str]:
        """Every workspace id that has usage, sorted."""
        ...

    def claim(self, key: str, now: float, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds: True for exactly one caller among every process
        sharing the store until the claim expires (alerts use it to fire once)."""
        ...

    def close(self, timeout: float | None = None) -> None:
        """Flush and release resources, waiting at most ``timeout`` seconds for the flush
        (what is not written by then is logged as lost)."""
        ...


@dataclass(frozen=True, slots=True)
class StoredPolicy:
    """One policy as a store keeps it: its JSON, the table version that wrote it, and when."""

    document: str
    version: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class PolicyTable:
    """Every stored policy, keyed ``"workspace:<id>"``, ``"kind:value"``, ``"kind:*"`` or
    ``"*"``, at table ``version`` (0: no policy was ever stored)."""

    version: int
    policies: Mapping[str, StoredPolicy]


@runtime_checkable
class ControlStore(Protocol):
    """What processes sharing a store must agree on besides usage: the policy table and the
    alert history. Every built-in backend implements it (and its ``a``-prefixed async twins);
    a store without it keeps the policies in each process's code."""

    def policies(self, known: int = -1) -> PolicyTable | None:
        """The policy table, or None when its version is still ``known`` (a cheap check: the
        table is read only when it changed)."""
        ...

    def put_policies(self, changes: Mapping[str, str | None], now: float, *,
                     only_if_new: bool = False, expect_version: int | None = None) -> int | None:
        """Store each ``key: JSON`` of ``changes`` (``None`` deletes the key) in one atomic step
        and one new table version, which it returns. Nothing is written, and None returned,
        when ``only_if_new`` and the store ever held a policy (how the policies in code seed
        a store once), or when the table's version is not ``expect_version`` (a change made
        from what was read: a concurrent change is never overwritten)."""
        ...

    def append_alert(self, scope: str, document: str, now: float, keep: int) -> None:
        """Add one entry (JSON, newest last) to ``scope``'s alert history, which keeps the
        last ``keep``."""
        ...

    def alert_history(self, scope: str, n: int) -> list[str]:
        """``scope``'s last ``n`` alert history entries, newest first."""
        ...

    def reset_budget(self, scope: str, month: str, now: float) -> int | None:
        """Start ``scope``'s budget of ``month`` again, atomically: its charge becomes what
        the reservations still pending at ``now`` hold (what was recorded, and the holds of
        reservations that expired unrecorded, are taken off; the breakdowns and the history
        keep the usage), and the month's ``budget_reset_at`` becomes ``now``. Returns the
        nano-dollars taken off, or None when the scope has no totals for ``month``."""
        ...


@runtime_checkable
class AsyncControlStore(Protocol):
    """The async face of :class:`ControlStore` (``as_async`` gives it to a store that has the
    sync one)."""

    async def apolicies(self, known: int = -1) -> PolicyTable | None:
        """:meth:`ControlStore.policies`."""
        ...

    async def aput_policies(self, changes: Mapping[str, str | None], now: float, *,
                            only_if_new: bool = False,
                            expect_version: int | None = None) -> int | None:
        """:meth:`ControlStore.put_policies`."""
        ...

    async def aappend_alert(self, scope: str, document: str, now: float, keep: int) -> None:
        """:meth:`ControlStore.append_alert`."""
        ...

    async def aalert_history(self, scope: str, n: int) -> list[str]:
        """:meth:`ControlStore.alert_history`."""
        ...

    async def areset_budget(self, scope: str, month: str, now: float) -> int | None:
        """:meth:`ControlStore.reset_budget`."""
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """The async face of a store: :class:`Store`'s methods, ``a``-prefixed, never blocking
    the event loop. A store may implement both (``RedisStore`` does, natively); wrap a
    sync-only store with :func:`as_async`."""

    async def acommit(self, entry: UsageEntry, reservation: Reservation | None = None) -> None:
        """:meth:`Store.commit`."""
        ...

    async def areserve(
        self,
        scopes: Sequence[str],
        delta: UsageDelta,
        limits: Mapping[str, Limits],
        now: float,
        month: str,
        ttl: float,
    ) -> Reservation | Denial:
        """:meth:`Store.reserve`."""
        ...

    async def arelease(self, reservation: Reservation, now: float) -> bool:
        """:meth:`Store.release`."""
        ...

    async def acounters(self, scope: str, now: float, month: str) -> Counters:
        """:meth:`Store.counters`."""
        ...

    async def abreakdown(self, scope: str, month: str, by: Breakdown) -> dict[str, Aggregate]:
        """:meth:`Store.breakdown`."""
        ...

    async def arecent(self, scope: str, n: int) -> list[UsageRecord]:
        """:meth:`Store.recent`."""
        ...

    async def aworkspaces(self) -> list[str]:
        """:meth:`Store.workspaces`."""
        ...

    async def aclaim(self, key: str, now: float, ttl: float) -> bool:
        """:meth:`Store.claim`."""
        ...

    async def aclose(self) -> None:
        """:meth:`Store.close`."""
        ...


_ASYNC_METHODS = ("acommit", "areserve", "arelease", "acounters", "abreakdown", "arecent",
                  "aworkspaces", "aclaim", "aclose")
#: The async twins of :class:`ControlStore`'s methods: a face has them when its store has
#: the sync ones.
_ASYNC_CONTROL = ("apolicies", "aput_policies", "aappend_alert", "aalert_history",
                  "areset_budget")


def as_async(store: Store) -> AsyncStore:
    """The async face of ``store``: the store itself when it implements :class:`AsyncStore`;
    else a wrapper that runs each call on a worker thread (inline for a store that says
    ``blocking = False``), using any ``a``-method the store has natively."""
    if isinstance(store, AsyncStore) and (
            not isinstance(store, ControlStore) or hasattr(store, _ASYNC_CONTROL[0])):
        return store
    if not isinstance(store, Store):
        raise TypeError(f"{type(store).__name__} is not a Store")
    return cast(AsyncStore, _AsyncFace(store))


class _AsyncFace:
    """:func:`as_async` of a store without a whole async face. Methods are looked up on the
    store at each call, so the face always calls what the store has now."""

    def __init__(self, store: Store) -> None:
        self.store = store
        inline = getattr(store, "blocking", True) is False
        control = tuple(name for name in _ASYNC_CONTROL if hasattr(store, name[1:]))
        for name in _ASYNC_METHODS + control:
            if hasattr(store, name):
                setattr(self, name, _native(store, name))
            else:
                setattr(self, name, (_inline if inline else _threaded)(store, name[1:]))

    def __repr__(self) -> str:
        return f"as_async({self.store!r})"


def _native(store: Store, name: str) -> Callable[..., Any]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        return await getattr(store, name)(*args, **kwargs)

    return run


def _threaded(store: Store, name: str) -> Callable[..., Any]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        method = functools.partial(getattr(store, name), *args, **kwargs)
        return await anyio.to_thread.run_sync(method)

    return run


def _inline(store: Store, name: str) -> Callable[..., Any]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        return getattr(store, name)(*args, **kwargs)

    return run
