"""The five limit metrics, in one table that policy, status, alerts, stores, the server and
the CLI all read: their name, what they count, their unit, the status field and the store
counter they read, their window, the mode a limit of them has by default, and how long an
alert about them stays claimed. And the one rule for "percent of a limit".
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from .pricing import format_usd, from_nanos

if TYPE_CHECKING:
    from .policy import QuotaPolicy
    from .storage.base import Counters

__all__ = [
    "BUDGET", "CHECK_ORDER", "METRICS", "METRIC_NAMES", "Metric", "Mode", "metric", "percent_of",
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
        window: ``"minute"`` or ``"day"`` (rolling), or ``"month"`` (the budget period).
        counts: ``"requests"``, ``"tokens"`` or ``"cost"``: what one call adds to it.
        default_mode: what its limit does by default when a call does not fit.
        claim_seconds: how long an alert about it stays claimed across processes.
    """

    name: str
    title: str
    unit: str
    report_field: str
    counter: str
    window: Literal["minute", "day", "month"]
    counts: Literal["requests", "tokens", "cost"]
    default_mode: Mode
    claim_seconds: float

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
           "cost_month_nanos", "month", "cost", "raise", 32 * 86400.0),
)
"""In the order the status report lists them."""

METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
BUDGET = METRICS[-1]
#: The order in which a store checks the rate limits of a reservation (the per-minute ones
#: first, then the per-day ones; the budget last): the first one that does not fit is the
#: refusal. The Redis scripts check in the same order.
CHECK_ORDER: tuple[Metric, ...] = tuple(
    sorted(METRICS[:-1], key=lambda m: (m.window != "minute", m.counts != "requests")))
_BY_NAME = {m.name: m for m in METRICS}


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
