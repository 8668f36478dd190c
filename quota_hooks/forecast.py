"""Spend and limit forecasts: pure arithmetic over numbers the stores already keep.

Nothing here reads a clock, a store or a policy: callers pass ``now``, the per-day charges
and the limits, and get frozen results whose :meth:`Forecast.to_dict` is the status JSON's
``forecast`` object.

**Budgets** (method :data:`SPEND_METHOD`, ``"trailing-7d-recency-weighted"``). The run rate is
a weighted mean of the charge per calendar day (in the policy's zone) over today and the 7
complete days before it. A day of age ``a`` (today 0, yesterday 1, ... 7) has weight
``8 - a``; today counts only for the part of it that has passed::

    rate = sum(w[a] * charge[a]) / sum(w[a] * exposure[a])     exposure: 1, today's elapsed part

So a flat $1 a day gives exactly $1 a day at any time of day, and early in a day today's
partial charge barely moves the rate. Days before the oldest day with a charge are not
history yet (a new workspace is not diluted by days it did not exist); no charge at all gives
a rate of 0. The projection is ``spent + rate * days_left`` (today's remaining part plus the
whole days left in the period); the budget runs out where that line crosses it, each day's
charge spread evenly over that day's real length (23 or 25 hours on a DST change).

**Rolling limits** (method :data:`LIMIT_METHOD`, ``"recent-rate-bounds"``). A per-day limit
counts a rolling 24 h window, so what leaves the window matters and the stores do not expose
its buckets. At the recent rate ``r`` (e.g. the last minute's count over 60 s) and a current
window total ``C`` of limit ``L``, the limit runs out no earlier than ``(L - C) / r`` from now
(nothing leaves the window) and, if ``r`` over a whole window exceeds ``L``, no later than
``L / r`` from now (the window then holds at least ``r * t``). Both bounds are reported.

Money stays exact (integer nano-dollars, :class:`~fractions.Fraction` rates); floats appear
only in :meth:`to_dict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .metrics import BUDGET, BUDGETS, RATE_METRICS
from .pricing import from_nanos, to_nanos
from .windows import Period, _local_date, _start_of, _zone, period_bounds, period_key
from .windows import period_dates as _period_dates

if TYPE_CHECKING:
    from .policy import QuotaPolicy
    from .storage.base import Aggregate, Counters

__all__ = [
    "LIMIT_METHOD",
    "LIMIT_METHOD_DETAIL",
    "SPEND_METHOD",
    "SPEND_METHOD_DETAIL",
    "TRAILING_DAYS",
    "Forecast",
    "LimitForecast",
    "Period",
    "SpendForecast",
    "daily_charges",
    "forecast_limit",
    "forecast_spend",
    "months_needed",
    "period_bounds",
    "period_key",
    "scope_forecast",
]


SPEND_METHOD = "trailing-7d-recency-weighted"
SPEND_METHOD_DETAIL = (
    "charge per local calendar day over today and the 7 complete days before it, weighted "
    "8 - age in days (today 8 ... 7 days ago 1), today counting for its elapsed part; days "
    "before the first charged day excluded; projected = spent + rate * days left")
LIMIT_METHOD = "recent-rate-bounds"
LIMIT_METHOD_DETAIL = (
    "recent rate r, window total C, limit L: runs out no earlier than now + (L - C) / r "
    "(nothing leaves the window), and no later than now + L / r when r * window > L")
TRAILING_DAYS = 7
"""Complete days before today that the spend rate reads."""

_WINDOW_DAY = 86_400.0


def months_needed(now: float, period: Period, zone: str = "UTC") -> list[str]:
    """The months (``"YYYY-MM"``, oldest first) whose day breakdowns :func:`forecast_spend`
    needs at ``now``: those of the trailing days and of the period so far (a week or the
    trailing days can reach into the previous month)."""
    today = _local_date(now, _zone(zone))
    first, _ = _period_dates(today, period)
    oldest = min(first, today - timedelta(days=TRAILING_DAYS))
    months: list[str] = []
    day = oldest.replace(day=1)
    while day <= today:
        months.append(f"{day.year:04d}-{day.month:02d}")
        day = date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)
    return months


def daily_charges(*breakdowns: Mapping[str, Aggregate]) -> dict[str, int]:
    """Nano-dollars charged per day (``cost_nanos + unpriced_nanos``: what the budget counted)
    from one or more months' ``"day"`` breakdowns, merged."""
    charges: dict[str, int] = {}
    for breakdown in breakdowns:
        for day, totals in breakdown.items():
            charges[day] = charges.get(day, 0) + totals.cost_nanos + totals.unpriced_nanos
    return charges


def _iso(moment: float) -> str:
    """Epoch seconds as a UTC timestamp, ``2025-09-05T09:31:27Z`` (as the status report)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _usd(nanos: int | Fraction) -> float:
    return float(from_nanos(round(nanos)))


@dataclass(frozen=True, slots=True)
class SpendForecast:
    """The projected spend of one budget period.

    Attributes:
        period: ``"day"``, ``"week"`` or ``"month"``.
        start: the period's first instant (epoch seconds); ``end``: the next period's.
        spent_nanos: charged so far in the period.
        rate_nanos_per_day: the run rate (exact), per local calendar day.
        projected_nanos: projected charge at the period's end (rounded half-even).
        budget_nanos: the period's budget; ``None``: no budget.
        projected_exhaustion: when the budget runs out at the run rate, strictly before
            ``end``; ``now`` when it already has; ``None`` when it does not (or no budget).
        history_days: complete days that went into the rate (0 to 7).
    """

    period: Period
    start: float
    end: float
    spent_nanos: int
    rate_nanos_per_day: Fraction
    projected_nanos: int
    budget_nanos: int | None = None
    projected_exhaustion: float | None = None
    history_days: int = 0

    @property
    def will_exceed(self) -> bool:
        """True when the budget is projected to run out before the period ends (the
        ``projected`` alert's condition)."""
        return self.projected_exhaustion is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ISO-8601 UTC times, USD as floats."""
        budget = self.budget_nanos
        return {
            "period": self.period,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "spent_usd": _usd(self.spent_nanos),
            "rate_usd_per_day": _usd(self.rate_nanos_per_day),
            "projected_usd": _usd(self.projected_nanos),
            "budget_usd": None if budget is None else _usd(budget),
            "projected_percent": (None if budget is None else 100.0 if budget <= 0
                                  else round(self.projected_nanos * 100 / budget, 2)),
            "projected_exhaustion": (None if self.projected_exhaustion is None
                                     else _iso(self.projected_exhaustion)),
            "will_exceed": self.will_exceed,
            "history_days": self.history_days,
        }


def forecast_spend(now: float, period: Period, zone: str, daily_charge: Mapping[str, int],
                   budget_nanos: int | None = None, *,
                   spent_nanos: int | None = None) -> SpendForecast:
    """Project ``now``'s ``period`` by :data:`SPEND_METHOD` (see the module docstring).

    Args:
        now: epoch seconds.
        period: the budget period, in IANA ``zone``.
        daily_charge: nano-dollars charged per local day (``"YYYY-MM-DD"``), covering today,
            the 7 days before it and the period so far (missing days charged nothing); see
            :func:`daily_charges` and :func:`months_needed`.
        budget_nanos: the period's budget, or ``None``.
        spent_nanos: the period's charge so far if the caller has it exactly (the budget
            counter); by default the sum of ``daily_charge`` over the period's days.
    """
    tz = _zone(zone)
    today = _local_date(now, tz)
    first, after = _period_dates(today, period)
    start, end = _start_of(first, tz), _start_of(after, tz)
    today_start, today_end = _start_of(today, tz), _start_of(today + timedelta(days=1), tz)
    elapsed = (Fraction(now) - Fraction(today_start)) / Fraction(today_end - today_start)

    def charge(day: date) -> int:
        return daily_charge.get(day.isoformat(), 0)

    ages = range(TRAILING_DAYS + 1)
    charged = [age for age in ages if charge(today - timedelta(days=age))]
    oldest = max(charged, default=-1)
    numerator = Fraction(0)
    denominator = Fraction(0)
    for age in range(oldest + 1):
        weight = TRAILING_DAYS + 1 - age
        numerator += weight * charge(today - timedelta(days=age))
        denominator += weight * (elapsed if age == 0 else 1)
    rate = numerator / denominator if denominator else Fraction(0)

    if spent_nanos is None:
        so_far = range((today - first).days + 1)
        spent_nanos = sum(charge(first + timedelta(days=i)) for i in so_far)
    whole_days_left = (after - today).days - 1
    projected = round(spent_nanos + rate * (1 - elapsed + whole_days_left))
    exhaustion = _exhaustion(now, tz, today, after, elapsed, rate, spent_nanos, budget_nanos)
    return SpendForecast(period, start, end, spent_nanos, rate, projected, budget_nanos,
                         exhaustion, max(oldest, 0))


def _exhaustion(now: float, tz: tzinfo, today: date, after: date, elapsed: Fraction,
                rate: Fraction, spent: int, budget: int | None) -> float | None:
    """When ``spent`` plus ``rate`` per day reaches ``budget``, strictly before the first
    instant of ``after``; ``now`` if it already has."""
    if budget is None:
        return None
    need = Fraction(budget - spent)
    if need <= 0:
        return now
    if rate <= 0:
        return None
    day, portion, at = today, 1 - elapsed, Fraction(now)
    while day < after:
        day_start = _start_of(day, tz)
        length = Fraction(_start_of(day + timedelta(days=1), tz) - day_start)
        available = rate * portion
        if need < available:
            return float(at + need / rate * length)
        need -= available
        day += timedelta(days=1)
        portion, at = Fraction(1), Fraction(_start_of(day, tz))
    return None


@dataclass(frozen=True, slots=True)
class LimitForecast:
    """When a rolling limit runs out at the recent rate (method :data:`LIMIT_METHOD`).

    Attributes:
        metric: the limit's name (``"rpd"``, ``"tpd"``).
        current: the window's total now; ``limit``: the limit.
        rate_per_hour: the recent rate the bounds assume.
        earliest: no earlier than this (nothing leaves the window); ``now`` if already out;
            ``None`` if not within one window at this rate.
        latest: no later than this, when the rate over a whole window exceeds the limit
            (it then surely runs out); else ``None``.
    """

    metric: str
    current: int
    limit: int
    rate_per_hour: float
    earliest: float | None
    latest: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ISO-8601 UTC times."""
        return {
            "current": self.current,
            "limit": self.limit,
            "rate_per_hour": round(self.rate_per_hour, 3),
            "earliest_exhaustion": None if self.earliest is None else _iso(self.earliest),
            "latest_exhaustion": None if self.latest is None else _iso(self.latest),
        }


def forecast_limit(metric: str, now: float, current: int, limit: int, recent: int,
                   recent_seconds: float = 60.0,
                   window_seconds: float = _WINDOW_DAY) -> LimitForecast:
    """Bound when a rolling limit runs out if the last ``recent_seconds`` (which counted
    ``recent``; e.g. ``requests_minute`` over 60 s) go on at the same rate.

    Over ``t`` seconds (``t <= window_seconds``) the window then holds at most
    ``current + r * t`` and at least ``r * t``, so the limit runs out in
    ``[(limit - current) / r, limit / r]``; the upper bound holds only when
    ``limit / r < window_seconds``, the lower one is reported when within one window.
    """
    if recent_seconds <= 0:
        raise ValueError(f"recent_seconds must be positive, got {recent_seconds!r}")
    rate = max(recent, 0) / recent_seconds
    if current >= limit:
        return LimitForecast(metric, current, limit, rate * 3600, now, now)
    earliest = latest = None
    if rate > 0:
        if (limit - current) / rate < window_seconds:
            earliest = now + (limit - current) / rate
        if limit / rate < window_seconds:
            latest = now + limit / rate
    return LimitForecast(metric, current, limit, rate * 3600, earliest, latest)


@dataclass(frozen=True, slots=True)
class Forecast:
    """The status JSON's ``forecast`` object: each budget period's spend and each rolling
    limit's run-out time."""

    budgets: Mapping[str, SpendForecast] = field(default_factory=dict)
    limits: Mapping[str, LimitForecast] = field(default_factory=dict)

    @classmethod
    def of(cls, budgets: Iterable[SpendForecast] = (),
           limits: Iterable[LimitForecast] = ()) -> Forecast:
        """A forecast keyed by period and by metric."""
        return cls({b.period: b for b in budgets}, {lim.metric: lim for lim in limits})

    def to_dict(self) -> dict[str, Any]:
        """``{"method": ..., "method_detail": ..., "budgets": {"month": {...}},
        "limits": {"rpd": {...}}, "limit_method": ...}``."""
        return {
            "method": SPEND_METHOD,
            "method_detail": SPEND_METHOD_DETAIL,
            "budgets": {name: b.to_dict() for name, b in self.budgets.items()},
            "limit_method": LIMIT_METHOD,
            "limit_method_detail": LIMIT_METHOD_DETAIL,
            "limits": {name: lim.to_dict() for name, lim in self.limits.items()},
        }


#: The counter of the last minute's share of a per-day metric: its recent rate.
_RECENT = {"requests_day": "requests_minute", "tokens_day": "tokens_minute"}


def scope_forecast(now: float, policy: QuotaPolicy, counters: Counters,
                   days: Iterable[Mapping[str, Aggregate]]) -> Forecast:
    """A scope's forecast under ``policy`` from what a status read has: its counters (each
    budget period's charge so far, holds included, and the last minute's requests and
    tokens) and the day breakdowns of :func:`months_needed` months. The month is always
    projected, the day and the week when the policy sets their budget; so are the per-day
    limits it sets."""
    zone, charges = policy.timezone, daily_charges(*days)
    budgets = []
    for m in BUDGETS:
        budget = m.limit(policy)
        if m.period is not None and (budget is not None or m is BUDGET):
            budgets.append(forecast_spend(
                now, m.period, zone, charges, None if budget is None else to_nanos(
                    Decimal(budget)), spent_nanos=getattr(counters, m.counter)))
    limits = []
    for m in RATE_METRICS:
        limit = m.limit(policy)
        if m.window == "day" and limit is not None:
            current = getattr(counters, m.counter)
            recent = getattr(counters, _RECENT[m.counter])
            limits.append(forecast_limit(m.name, now, current, int(limit), recent))
    return Forecast.of(budgets, limits)
