"""The limit metrics, in one table that policy, status, alerts, stores, the server and
the CLI all read: their name, what they count, their unit, the status field and the store
counter they read, their window, the mode a limit of them has by default, and how long an
alert about them stays claimed. And the one rule for "percent of a limit".
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from .pricing import format_usd, from_nanos
from .windows import Period

if TYPE_CHECKING:
    from .policy import QuotaPolicy
    from .storage.base import Counters

__all__ = [
    "BUDGET", "BUDGETS", "CHECK_ORDER", "METRICS", "METRIC_NAMES", "RATE_METRICS", "Metric", "Mode",
    "budget_of", "metric", "percent_of",
]

Mode = Literal["raise", "wait", "observe"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One limit metric.

    Attributes:
        name: the policy field and the key used everywhere (``"rpm"`` ...).
        title: what it is, for people (``"requests-per-minute limit"``).
        unit: ``"requests"``, ``"tokens"`` or ``"USD"``.
        report_field: its :class:`~quota_hooks.status.StatusReport` field (the seed JSON key).
        counter: the :class:`~quota_hooks.storage.base.Counters` attribute it reads.
        window: ``"minute"`` or ``"day"``, rolling, for a rate limit; a budget's calendar
            period (``"day"``, ``"week"`` or ``"month"``, in the policy's zone) is
            :attr:`period`.
        counts: ``"requests"``, ``"tokens"`` or ``"cost"``: what one call adds to it.
        default_mode: what its limit does by default when a call does not fit.
        claim_seconds: how long an alert about it stays claimed across processes.
    """

    name: str
    title: str
    unit: str
    report_field: str
    counter: str
    window: Literal["minute", "day"] | None
    counts: Literal["requests", "tokens", "cost"]
    default_mode: Mode
    claim_seconds: float
    period: Period | None = None
    """A budget's calendar period (``None`` for a rate limit)."""
    reset_field: str = ""
    """A budget's :class:`~quota_hooks.storage.base.Counters` attribute saying when its
    period was last reset."""

    @property
    def is_budget(self) -> bool:
        """True for the money budget (the others are rate limits)."""
        return self.counts == "cost"

    def current(self, counters: Counters) -> int | Decimal:
        """What the scope has used of this metric: a count, or USD (exact) for the budget."""
        value: int = getattr(counters, self.counter)
        return from_nanos(value) if self.is_budget else value

    def limit(self, policy: QuotaPolicy) -> int | Decimal | None:
        """The policy's limit of this metric (``None``: unlimited)."""
        value: int | Decimal | None = getattr(policy, self.name)
        return value

    def amount(self, current: int | Decimal, limit: int | Decimal) -> str:
        """``current`` of ``limit`` for people: ``"12 of 500 requests"``, ``"$0.50 of $100.00"``."""
        if self.is_budget:
            return f"{format_usd(current)} of {format_usd(limit)}"
        return f"{current} of {limit} {self.unit}"


METRICS: tuple[Metric, ...] = (
    Metric("rpm", "requests-per-minute limit", "requests", "requests_per_minute",
           "requests_minute", "minute", "requests", "wait", 60.0),
    Metric("rpd", "requests-per-day limit", "requests", "requests_per_day",
           "requests_day", "day", "requests", "raise", 3600.0),
    Metric("tpm", "tokens-per-minute limit", "tokens", "tokens_per_minute",
           "tokens_minute", "minute", "tokens", "wait", 60.0),
    Metric("tpd", "tokens-per-day limit", "tokens", "tokens_per_day",
           "tokens_day", "day", "tokens", "raise", 3600.0),
    Metric("monthly_budget_usd", "monthly budget", "USD", "monthly_budget_usd",
           "cost_month_nanos", None, "cost", "raise", 32 * 86400.0, "month",
           "budget_reset_at"),
    Metric("daily_budget_usd", "daily budget", "USD", "daily_budget_usd",
           "cost_day_nanos", None, "cost", "raise", 26 * 3600.0, "day", "day_reset_at"),
    Metric("weekly_budget_usd", "weekly budget", "USD", "weekly_budget_usd",
           "cost_week_nanos", None, "cost", "raise", 8 * 86400.0, "week", "week_reset_at"),
)
"""In the order the status report lists them: the seed's five, then the day and week
budgets."""

METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
RATE_METRICS: tuple[Metric, ...] = tuple(m for m in METRICS if not m.is_budget)
BUDGETS: tuple[Metric, ...] = tuple(m for m in METRICS if m.is_budget)
"""The money budgets, one per calendar period; a policy may set any of them at once."""
BUDGET = BUDGETS[0]
"""The seed's monthly budget."""
#: The order in which a store checks the rate limits of a reservation (the per-minute ones
#: first, then the per-day ones; the budget last): the first one that does not fit is the
#: refusal. The Redis scripts check in the same order.
CHECK_ORDER: tuple[Metric, ...] = tuple(
    sorted(RATE_METRICS, key=lambda m: (m.window != "minute", m.counts != "requests")))
_BY_NAME = {m.name: m for m in METRICS}
_BY_PERIOD = {m.period: m for m in BUDGETS}


def budget_of(period: str) -> Metric:
    """The budget metric of ``period`` (``"day"``, ``"week"`` or ``"month"``); a KeyError
    names the periods."""
    try:
        return _BY_PERIOD[period]  # type: ignore[index]
    except KeyError:
        raise KeyError(f"unknown budget period {period!r}; use day, week or month") from None


def metric(name: str) -> Metric:
    """The metric called ``name``; a KeyError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown limit metric {name!r}; use one of {METRIC_NAMES}") from None


def percent_of(current: int | Decimal, limit: int | Decimal) -> Decimal:
    """How much of ``limit`` ``current`` uses, in percent, exactly (100 is at the limit).

    A limit of 0 allows nothing, so it is always fully used: 100, even before any call
    (the status then says the limit is reached, and the alerts agree).
    """
    if limit <= 0:
        return Decimal(100)
    return Decimal(current) * 100 / Decimal(limit)
