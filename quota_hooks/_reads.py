"""What a status read reads of a store, sync and async: a scope's counters with its day and
week budgets (their own scopes: see :func:`~quota_hooks.storage.base.budget_scope`), which
the status, the alerts and the exporters read, and for an enhanced status the month's
breakdowns, the recent calls and the forecast; and what a history read reads (the month
breakdowns its range spans)."""

from __future__ import annotations

from ._core import budget_reads, with_budgets
from .forecast import Forecast, months_needed, scope_forecast
from .policy import QuotaPolicy
from .status import Extra, History, build_history
from .storage.base import AsyncStore, Breakdown, Counters, Store
from .windows import month_key

__all__ = ["aread_counters", "aread_history", "aread_status", "read_counters", "read_history",
           "read_status"]

#: A status read: the counters, what an enhanced report adds, and the forecast.
StatusRead = tuple[Counters, Extra | None, Forecast | None]


def read_counters(store: Store, scope: str, policy: QuotaPolicy, now: float) -> Counters:
    """A scope's counters at ``now``, its day and week budgets' included."""
    counters = store.counters(scope, now, month_key(now, policy.timezone))
    reads = budget_reads(scope, policy, now)
    return with_budgets(counters, reads, [store.counters(key, now, "") for _, key in reads])


async def aread_counters(store: AsyncStore, scope: str, policy: QuotaPolicy,
                         now: float) -> Counters:
    """Async :func:`read_counters`."""
    counters = await store.acounters(scope, now, month_key(now, policy.timezone))
    reads = budget_reads(scope, policy, now)
    return with_budgets(counters, reads, [await store.acounters(key, now, "")
                                          for _, key in reads])


def read_status(store: Store, scope: str, policy: QuotaPolicy, now: float, *,
                recent: int | None) -> StatusRead:
    """A scope's counters at ``now``, and with ``recent`` (the recent calls to read) the
    month per model and API method and the forecast from the day breakdowns."""
    counters = read_counters(store, scope, policy, now)
    if recent is None:
        return counters, None, None
    month = month_key(now, policy.timezone)
    extra = (store.breakdown(scope, month, "model"), store.breakdown(scope, month, "api_method"),
             store.recent(scope, recent))
    days = [store.breakdown(scope, m, "day")
            for m in months_needed(now, "month", policy.timezone)]
    return counters, extra, scope_forecast(now, policy, counters, days)


async def aread_status(store: AsyncStore, scope: str, policy: QuotaPolicy, now: float, *,
                       recent: int | None) -> StatusRead:
    """Async :func:`read_status`."""
    counters = await aread_counters(store, scope, policy, now)
    if recent is None:
        return counters, None, None
    month = month_key(now, policy.timezone)
    extra = (await store.abreakdown(scope, month, "model"),
             await store.abreakdown(scope, month, "api_method"), await store.arecent(scope, recent))
    days = [await store.abreakdown(scope, m, "day")
            for m in months_needed(now, "month", policy.timezone)]
    return counters, extra, scope_forecast(now, policy, counters, days)


def read_history(store: Store, scope: str, workspace_id: str, span: tuple[list[str], str],
                 by: Breakdown) -> History:
    """Usage of a workspace per day, model or API method over ``span`` (the months and the
    first day of :func:`~quota_hooks.status.history_months`), from the month totals."""
    months, first_day = span
    tables = [store.breakdown(scope, month, by) for month in months]
    return build_history(workspace_id, by, first_day, months, tables)


async def aread_history(store: AsyncStore, scope: str, workspace_id: str,
                        span: tuple[list[str], str], by: Breakdown) -> History:
    """Async :func:`read_history`."""
    months, first_day = span
    tables = [await store.abreakdown(scope, month, by) for month in months]
    return build_history(workspace_id, by, first_day, months, tables)
