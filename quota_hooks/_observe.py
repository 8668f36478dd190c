"""What the observability exports share (:mod:`quota_hooks.otel`, the server's ``/metrics``):
bounded label sets, and the exact numbers of one workspace read from the store.

Labels are bounded so that no traffic can make an exporter's series grow without bound: a
:class:`BoundedLabels` keeps the first ``limit`` names it admits and calls every later one
:data:`OTHER`. It is sticky (a name once admitted keeps its label for the life of the
exporter), so a series of ``other`` only ever grows, as a Prometheus counter must: promoting a
name out of ``other`` later would make it drop, which Prometheus reads as a counter reset.

Money stays integer nano-dollars here; exporters turn it into dollars as they write it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from ._reads import read_counters
from .errors import ConfigurationError, StorageError
from .metrics import BUDGET, BUDGETS, METRICS
from .pricing import from_nanos
from .status import QuotaStatus, used_fraction
from .storage.base import workspace_scope

if TYPE_CHECKING:
    from .manager import QuotaManager

__all__ = ["OTHER", "BoundedLabels", "BudgetNumbers", "WorkspaceNumbers", "check_limit",
           "read_numbers", "usd"]

logger = logging.getLogger("quota_hooks")

#: The label of every name beyond a label set's limit.
OTHER = "other"


def check_limit(name: str, value: object) -> int:
    """``value`` as a label limit: a whole number >= 1, else a :class:`ConfigurationError`
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


class BoundedLabels:
    """At most ``limit`` distinct names, in the order they are first admitted; every other
    name is :data:`OTHER`. Thread-safe; a lookup of a known name is one dict read."""

    def __init__(self, limit: int, what: str, other: str = OTHER) -> None:
        self.limit = limit
        self.what = what
        self.other = other
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, name: str) -> str:
        """The label of ``name``: itself while there is room (or once admitted), else
        :data:`OTHER`."""
        label = self._known.get(name)
        if label is not None:
            return label
        with self._lock:
            if name in self._known:
                return self._known[name]
            if len(self._known) < self.limit:
                self._known[name] = name
                return name
            if not self._warned:
                self._warned = True
                logger.warning("quota-hooks: more than %d %s: the others are labelled %r "
                               "(raise the limit to see more by name)", self.limit, self.what,
                               self.other)
        return self.other

    def admit(self, names: list[str]) -> None:
        """Admit ``names`` in order while there is room (the biggest first, say)."""
        for name in names:
            if len(self._known) >= self.limit:
                break
            self(name)

    def known(self) -> list[str]:
        """The names admitted so far, in order."""
        return list(self._known)


@dataclass(frozen=True, slots=True)
class BudgetNumbers:
    """One budget period of a workspace now: what it used (nano-dollars) and its limit."""

    used_nanos: int
    limit: Decimal | None

    @property
    def remaining(self) -> Decimal | None:
        """What is left of the budget (never below 0), or None without a budget."""
        if self.limit is None:
            return None
        return max(Decimal(0), self.limit - from_nanos(self.used_nanos))


@dataclass(frozen=True, slots=True)
class WorkspaceNumbers:
    """One workspace now, exactly: its status, its budgets in nano-dollars per period (the
    month always, the day and week when its policy sets them), and the used fraction of
    each limit it has (1.0 is at the limit)."""

    status: QuotaStatus
    budgets: dict[str, BudgetNumbers]
    ratios: dict[str, float]


def read_numbers(manager: QuotaManager, workspace_id: str) -> WorkspaceNumbers:
    """:class:`WorkspaceNumbers` of ``workspace_id``, read from the manager's store (so they
    hold for every process sharing it). Raises :class:`StorageError` when the store fails."""
    report = manager.status(workspace_id, enhanced=False)
    now = manager.now()
    policy = manager.policy_for(workspace_id)
    try:
        counters = read_counters(manager.store, workspace_scope(workspace_id), policy, now)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"reading the counters of {workspace_id!r} failed: {exc}") from exc
    ratios: dict[str, float] = {}
    for metric in METRICS:
        limit = metric.limit(policy)
        if limit is not None:
            ratios[metric.name] = used_fraction(metric.current(counters), limit)
    budgets = {}
    for m in BUDGETS:
        limit = m.limit(policy)
        if limit is not None or m is BUDGET:
            budgets[str(m.period)] = BudgetNumbers(
                getattr(counters, m.counter), None if limit is None else Decimal(limit))
    return WorkspaceNumbers(status=report.status, budgets=budgets, ratios=ratios)


def usd(nanos: int) -> float:
    """Integer nano-dollars as the float an exporter writes (the one conversion, at the
    edge)."""
    return float(from_nanos(nanos))
