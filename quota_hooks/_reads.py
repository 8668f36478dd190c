"""What a status read reads of a store, sync and async: a scope's counters with its day and
week budgets (their own scopes: see :func:`~quota_hooks.storage.base.budget_scope`), which
the status, the alerts and the exporters read, and for an enhanced status the month's
breakdowns, the recent calls and the forecast; and what a history read reads (the month
breakdowns its range spans)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ._core import budget_reads, with_budgets
from ._health import Health
from .advice import Advice, advise, mixes_from_breakdown
from .control import PolicySync, reading
from .forecast import Forecast, months_needed, scope_forecast
from .policy import Policies, QuotaPolicy
from .pricing import PriceBook
from .status import (
    Extra,
    History,
    StatusReport,
    WorkspaceTracker,
    build_history,
    build_status,
    history_months,
)
from .storage.base import AsyncStore, Breakdown, Counters, Store, workspace_scope
from .typing import Clock
from .windows import month_key

__all__ = ["Reports", "aread_counters", "aread_history", "aread_status", "read_counters",
           "read_history", "read_status"]

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


class Reports:
    """The reads of :class:`~quota_hooks.manager.QuotaManager`: the status report, the
    workspaces, the history and the cheaper-model advice (the store reads are this
    module's functions; the report is :func:`~quota_hooks.status.build_status`'s)."""

    store: Store
    _astore: AsyncStore
    policies: Policies
    prices: PriceBook
    clock: Clock
    health: Health
    recent_limit: int
    _sync: PolicySync
    policy_source: Callable[[str], dict[str, Any]]

    def status(self, workspace_id: str, *, enhanced: bool = True,
               recent: int | None = None) -> StatusReport:
        """The status of ``workspace_id`` now. Raises :class:`StorageError` if the store fails."""
        self._sync.before_call()
        now, policy, scope, _ = self._where(workspace_id)
        with reading("status", workspace_id):
            counters, extra, forecast = read_status(
                self.store, scope, policy, now,
                recent=(self.recent_limit if recent is None else recent) if enhanced else None)
        return self._report(workspace_id, policy, now, counters, extra, forecast)

    async def astatus(self, workspace_id: str, *, enhanced: bool = True,
                      recent: int | None = None) -> StatusReport:
        """Async :meth:`status`."""
        self._sync.before_call()
        now, policy, scope, _ = self._where(workspace_id)
        with reading("status", workspace_id):
            counters, extra, forecast = await aread_status(
                self._astore, scope, policy, now,
                recent=(self.recent_limit if recent is None else recent) if enhanced else None)
        return self._report(workspace_id, policy, now, counters, extra, forecast)

    def _where(self, workspace_id: str) -> tuple[float, QuotaPolicy, str, str]:
        now = self.clock()
        policy = self.policies.for_workspace(workspace_id)
        return now, policy, workspace_scope(workspace_id), month_key(now, policy.timezone)

    def _report(self, workspace_id: str, policy: QuotaPolicy, now: float, counters: Any,
                extra: Extra | None, forecast: Forecast | None = None) -> StatusReport:
        return build_status(workspace_id, policy, now, counters, extra, forecast=forecast,
                            degraded=self.health.degraded(workspace_id, now, self.store),
                            provider_limits=self.health.provider_limits(workspace_id),
                            policy_source=self.policy_source(workspace_id))

    def workspaces(self) -> list[str]:
        """Every workspace with recorded usage, sorted."""
        return self.store.workspaces()

    async def aworkspaces(self) -> list[str]:
        """Async :meth:`workspaces`."""
        return await self._astore.aworkspaces()

    def history(self, workspace_id: str, *, since: float | None = None,
                by: Breakdown = "day") -> History:
        """Usage of ``workspace_id`` since ``since`` (epoch seconds; 30 days ago by default),
        per calendar day, model or API method. Reads the month totals, never the history.

        Per day the range is exact; per model or method it is counted in whole budget months
        (the months that ``since`` and now fall in, and those between).
        """
        self._sync.before_call()
        now, policy, scope, _ = self._where(workspace_id)
        span = history_months(now, since, policy.timezone)  # a bad ``since``: a ValueError
        with reading("history", workspace_id):
            return read_history(self.store, scope, workspace_id, span, by)

    async def ahistory(self, workspace_id: str, *, since: float | None = None,
                       by: Breakdown = "day") -> History:
        """Async :meth:`history`."""
        self._sync.before_call()
        now, policy, scope, _ = self._where(workspace_id)
        span = history_months(now, since, policy.timezone)
        with reading("history", workspace_id):
            return await aread_history(self._astore, scope, workspace_id, span, by)

    def advise(self, workspace_id: str, *, provider: str | None = None,
               capabilities: Mapping[str, Iterable[str]] | None = None) -> Advice:
        """Cheaper-model advice: this budget month's token mix of each model the workspace
        used (input, cached, cache-write, output, reasoning), repriced on the other models of
        its provider that genai-prices bills for the same kinds of units, side by side with
        the saving (:mod:`quota_hooks.advice`). Arithmetic on real usage: it says nothing
        about quality. Raises :class:`StorageError` if the store fails."""
        self._sync.before_call()
        now, _, scope, month = self._where(workspace_id)
        with reading("usage", workspace_id):
            models = self.store.breakdown(scope, month, "model")
        return advise(mixes_from_breakdown(models), self.prices, provider=provider,
                      when=datetime.fromtimestamp(now, UTC), capabilities=capabilities)

    def get_tracker(self, workspace_id: str) -> WorkspaceTracker:
        """The seed guide's per-workspace view: ``get_status_data()`` and friends."""
        return WorkspaceTracker(self, workspace_id)
