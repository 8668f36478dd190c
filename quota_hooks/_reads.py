"""Reading a scope's counters with its day and week budgets (their own scopes: see
:func:`~quota_hooks.storage.base.budget_scope`), sync and async: what the status, the
alerts and the exporters read."""

from __future__ import annotations

from ._core import budget_reads, with_budgets
from .policy import QuotaPolicy
from .storage.base import AsyncStore, Counters, Store
from .windows import month_key

__all__ = ["aread_counters", "read_counters"]


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
