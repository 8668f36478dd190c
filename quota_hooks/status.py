"""Status levels and the status report: the JSON that the API, the WebSocket and the seed's
``get_status_data()`` serve.

The shape is the seed guide's (extend, never rename)::

    {"status": "normal",
     "requests_per_minute": {"current": 10, "limit": 500, "percentage": 2.0},
     "requests_per_day": {...}, "tokens_per_minute": {...}, "tokens_per_day": {...},
     "monthly_budget_usd": {"current": 1.25, "limit": 100, "percentage": 1.25},
     "enhanced_tracking": {"models_breakdown": {...}, "api_methods_breakdown": {...},
                           "recent_activity": [...]}}

Precedence of the status: ``quota_exceeded`` > ``rate_limited`` > ``degraded`` > ``warning`` >
``normal``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from .forecast import Forecast
from .metrics import BUDGETS, METRICS, percent_of
from .policy import QuotaPolicy
from .pricing import from_nanos
from .storage.base import Aggregate, Counters
from .usage import UsageRecord
from .windows import day_key, month_bounds, month_key

__all__ = [
    "Activity",
    "AlertLevel",
    "EnhancedTracking",
    "History",
    "HistoryRow",
    "LimitUsage",
    "MethodUsage",
    "ModelUsage",
    "QuotaStatus",
    "StatusReport",
    "StatusSource",
    "UnpricedUsage",
    "WorkspaceTracker",
    "activity",
    "build_history",
    "build_status",
    "evaluate",
    "history_months",
    "limit_usage",
    "percent_of",
    "priced_usd",
    "used_fraction",
]


class QuotaStatus(str, Enum):  # noqa: UP042 - str() as in 0.1
    """The seed guide's status levels."""

    NORMAL = "normal"
    WARNING = "warning"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    DEGRADED = "degraded"


class AlertLevel(str, Enum):  # noqa: UP042 - str() as in 0.1
    """How close the most used limit is to its maximum."""

    NONE = "none"
    WARNING = "warning"
    CRITICAL = "critical"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class LimitUsage(_Model):
    """Usage of one limit. ``limit`` is ``None`` when unlimited (percentage is then 0)."""

    current: int | float
    limit: int | float | None
    percentage: float


class ModelUsage(_Model):
    """One model's usage in the current budget month.

    ``cost_usd`` is what its priced calls cost, ``None`` when none could be priced (never a
    made-up 0); ``unpriced_count`` calls had no price, and the budget charged them
    ``unpriced_charge_usd`` (the policy's ``unpriced`` setting).
    """

    request_count: int
    tokens_used: int
    cost_usd: float | None
    input_tokens: int = 0
    output_tokens: int = 0
    error_count: int = 0
    unpriced_count: int = 0
    unpriced_charge_usd: float = 0.0
    cached_input_tokens: int = 0
    """Of ``input_tokens``, read from a prompt cache."""
    reasoning_tokens: int = 0
    """Of ``output_tokens``, spent reasoning."""


class MethodUsage(_Model):
    """One API method's usage in the current budget month (costs as in
    :class:`ModelUsage`)."""

    request_count: int
    error_count: int
    tokens_used: int = 0
    cost_usd: float | None = 0.0
    unpriced_count: int = 0
    unpriced_charge_usd: float = 0.0


class UnpricedUsage(_Model):
    """The calls of the budget month whose model had no price."""

    calls: int = 0
    charge_usd: float = 0.0
    """What the budget charged them (included in ``monthly_budget_usd.current``)."""
    policy: str = "fallback"
    """The policy's ``unpriced``: ``fallback``, ``refuse`` or ``allow``."""


class Activity(_Model):
    """One recent call (metadata only)."""

    timestamp: str
    model: str
    api_method: str
    tokens_used: int
    success: bool
    cost_usd: float | None = None
    status_code: int | None = None
    latency_ms: float | None = None
    estimated: bool = False


class EnhancedTracking(_Model):
    """The seed's ``enhanced_tracking`` part."""

    models_breakdown: dict[str, ModelUsage]
    api_methods_breakdown: dict[str, MethodUsage]
    recent_activity: list[Activity]


class HistoryRow(_Model):
    """One day's, model's or API method's usage in a :class:`History`."""

    request_count: int
    error_count: int
    tokens_used: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    """What priced calls cost (``None`` when none of them could be priced)."""
    unpriced_count: int = 0
    unpriced_charge_usd: float = 0.0
    charged_usd: float = 0.0
    """What the budget counted: ``cost_usd`` plus ``unpriced_charge_usd``."""


class History(_Model):
    """A workspace's usage over time (``GET /api/quota/history/{workspace_id}``)."""

    workspace_id: str
    by: str
    """``day``, ``model`` or ``api_method``."""
    since: str
    """The first day counted (``YYYY-MM-DD``); per model or method, its whole month counts."""
    months: list[str]
    """The budget months read."""
    rows: dict[str, HistoryRow]
    """Per day (ascending), model or method (by name)."""
    total_cost_usd: float
    """What the budget counted over the range (priced calls and the charge of unpriced ones)."""
    total_requests: int


class StatusReport(_Model):
    """The status of one workspace: the seed JSON plus ``tokens_per_day``,
    ``monthly_budget_usd``, ``alert_level``, ``workspace_id``, ``updated_at`` and
    ``provider_limits``."""

    workspace_id: str
    status: QuotaStatus
    requests_per_minute: LimitUsage
    requests_per_day: LimitUsage
    tokens_per_minute: LimitUsage
    tokens_per_day: LimitUsage
    monthly_budget_usd: LimitUsage
    daily_budget_usd: LimitUsage | None = None
    """The day budget's use today, when the policy sets one (an extension)."""
    weekly_budget_usd: LimitUsage | None = None
    """The week budget's use this ISO week, when the policy sets one (an extension)."""
    alert_level: AlertLevel
    updated_at: str
    provider_limits: dict[str, dict[str, str]] = {}
    """The provider's own latest ``x-ratelimit-*`` headers, per provider."""
    thresholds: dict[str, float] = {}
    """The policy's ``warning`` and ``critical`` percentages."""
    alert_thresholds: list[float] = []
    """The policy's list of alert thresholds, if it sets one."""
    policy: dict[str, Any] = {}
    """Where the policy in force comes from: ``{"source": "store", "key": "workspace:acme",
    "version": 3}`` or ``{"source": "code", "key": "*"}``."""
    unpriced: UnpricedUsage = UnpricedUsage()
    """How much of ``monthly_budget_usd.current`` is charged for calls without a price."""
    enhanced_tracking: EnhancedTracking | None = None
    forecast: dict[str, Any] | None = None
    """The enhanced report's projections (:mod:`quota_hooks.forecast`): the budget's spend
    at the end of its period and when it runs out, the per-day limits' run-out times, and
    the method."""

    def to_dict(self, *, enhanced: bool = True) -> dict[str, Any]:
        """The JSON-ready dict; without ``enhanced_tracking`` and ``forecast`` when
        ``enhanced`` is False."""
        data = self.model_dump(mode="json", exclude={"enhanced_tracking", "forecast"})
        for name in _OPTIONAL_BUDGETS:
            if data[name] is None:  # a budget the policy does not set is left out
                del data[name]
        if enhanced and self.enhanced_tracking is not None:
            data["enhanced_tracking"] = self.enhanced_tracking.model_dump(mode="json")
        if enhanced and self.forecast is not None:
            data["forecast"] = self.forecast
        return data

    @property
    def limits(self) -> dict[str, LimitUsage]:
        """The limit usages keyed by policy metric (``rpm`` ... ``monthly_budget_usd``, and
        the day and week budgets the policy sets)."""
        usage: dict[str, LimitUsage] = {m.name: getattr(self, m.report_field) for m in METRICS
                                        if getattr(self, m.report_field) is not None}
        return usage


_OPTIONAL_BUDGETS = tuple(m.report_field for m in BUDGETS[1:])


_BUDGET_NAMES = frozenset(m.name for m in BUDGETS)


def used_fraction(current: int | Decimal, limit: int | Decimal) -> float:
    """``current / limit`` as a float (1.0 is at the limit): :func:`percent_of` / 100."""
    return float(percent_of(current, limit) / 100)


def limit_usage(current: int | Decimal, limit: int | Decimal | None) -> LimitUsage:
    """A :class:`LimitUsage` from exact numbers (money as ``Decimal`` USD)."""
    shown_current: int | float = (
        float(round(current, 6)) if isinstance(current, Decimal) else current
    )
    if limit is None:
        return LimitUsage(current=shown_current, limit=None, percentage=0.0)
    if isinstance(limit, Decimal):
        shown_limit: int | float = (
            int(limit) if limit == limit.to_integral_value() else float(limit)
        )
    else:
        shown_limit = limit
    return LimitUsage(
        current=shown_current,
        limit=shown_limit,
        percentage=round(float(percent_of(current, limit)), 2),
    )


def evaluate(
    percents: Mapping[str, Decimal],
    *,
    warning_percent: float,
    critical_percent: float,
    rate_limited_recently: bool,
    degraded: bool,
) -> tuple[QuotaStatus, AlertLevel]:
    """The status and alert level from each limit's exact :func:`percent_of` (100 is at the
    limit), keyed by metric name; unlimited metrics are left out.

    The thresholds compare exactly as the alerts do (:mod:`quota_hooks.alerts.rules`), so a
    status and an alert never disagree about a level.
    """
    highest = max(percents.values(), default=Decimal(0))
    if highest >= Decimal(str(critical_percent)):
        level = AlertLevel.CRITICAL
    elif highest >= Decimal(str(warning_percent)):
        level = AlertLevel.WARNING
    else:
        level = AlertLevel.NONE

    if any(percents.get(m.name, 0) >= 100 for m in BUDGETS):
        status = QuotaStatus.QUOTA_EXCEEDED
    elif rate_limited_recently or any(
        percent >= 100 for name, percent in percents.items() if name not in _BUDGET_NAMES
    ):
        status = QuotaStatus.RATE_LIMITED
    elif degraded:
        status = QuotaStatus.DEGRADED
    elif level is not AlertLevel.NONE:
        status = QuotaStatus.WARNING
    else:
        status = QuotaStatus.NORMAL
    return status, level


# ---------------------------------------------------------------------- building reports
Extra = tuple[Mapping[str, "Aggregate"], Mapping[str, "Aggregate"], Sequence["UsageRecord"]]
"""What an enhanced report adds: the month per model, per API method, and the recent calls."""


def build_status(
    workspace_id: str,
    policy: QuotaPolicy,
    now: float,
    counters: Counters,
    extra: Extra | None = None,
    *,
    degraded: bool = False,
    provider_limits: Mapping[str, Mapping[str, str]] | None = None,
    policy_source: Mapping[str, Any] | None = None,
    forecast: Forecast | None = None,
) -> StatusReport:
    """The :class:`StatusReport` of a workspace from its counters and its policy. Pure.

    ``degraded``: tracking failed recently (the report says so unless a limit is reached);
    a minute in which most calls failed is degraded too.
    """
    c = counters
    usages: dict[str, LimitUsage] = {}
    percents: dict[str, Decimal] = {}
    for m in METRICS:
        current, limit = m.current(c), m.limit(policy)
        if limit is None and m.report_field in _OPTIONAL_BUDGETS:
            continue
        usages[m.report_field] = limit_usage(current, limit)
        if limit is not None:
            percents[m.name] = percent_of(current, limit)
    failing = c.calls_minute > 0 and c.errors_minute * 2 > c.calls_minute
    status, level = evaluate(
        percents,
        warning_percent=policy.warning_percent,
        critical_percent=policy.critical_percent,
        rate_limited_recently=c.rate_limited_minute > 0,
        degraded=failing or degraded,
    )
    enhanced = None
    if extra is not None:
        models, methods, recent = extra
        enhanced = EnhancedTracking(
            models_breakdown={
                name: ModelUsage(
                    request_count=a.requests, tokens_used=a.tokens, cost_usd=priced_usd(a),
                    input_tokens=a.input_tokens, output_tokens=a.output_tokens,
                    error_count=a.errors, unpriced_count=a.unpriced,
                    unpriced_charge_usd=float(from_nanos(a.unpriced_nanos)),
                    cached_input_tokens=a.cached_input_tokens,
                    reasoning_tokens=a.reasoning_tokens,
                )
                for name, a in sorted(models.items())
            },
            api_methods_breakdown={
                name: MethodUsage(
                    request_count=a.requests, error_count=a.errors, tokens_used=a.tokens,
                    cost_usd=priced_usd(a), unpriced_count=a.unpriced,
                    unpriced_charge_usd=float(from_nanos(a.unpriced_nanos)),
                )
                for name, a in sorted(methods.items())
            },
            recent_activity=[activity(r) for r in recent],
        )
    return StatusReport(
        workspace_id=workspace_id,
        status=status,
        **usages,
        alert_level=level,
        updated_at=iso(now),
        provider_limits={k: dict(v) for k, v in (provider_limits or {}).items()},
        policy=dict(policy_source or {}),
        alert_thresholds=[float(t) for t in policy.thresholds or ()],
        thresholds={"warning": float(policy.warning_percent),
                    "critical": float(policy.critical_percent)},
        unpriced=UnpricedUsage(calls=c.unpriced_month_calls,
                               charge_usd=float(from_nanos(c.unpriced_month_nanos)),
                               policy=policy.unpriced),
        enhanced_tracking=enhanced,
        forecast=None if forecast is None else forecast.to_dict(),
    )


def history_months(now: float, since: float | None, zone: str) -> tuple[list[str], str]:
    """The budget months a history from ``since`` (30 days ago by default) to ``now`` reads,
    and its first day. Stores keep about 13 months: older starts are cut there.

    Raises:
        ValueError: ``since`` is not a time in the past.
    """
    start = now - 30 * 86_400 if since is None else since
    if not math.isfinite(start) or start > now:
        raise ValueError(f"since must be a time in the past, got {since!r}")
    months: list[str] = []
    start = moment = max(start, now - 400 * 86_400)
    while moment <= now:
        months.append(month_key(moment, zone))
        moment = month_bounds(moment, zone)[1]
    last = month_key(now, zone)
    if months[-1] != last:
        months.append(last)
    return months, day_key(start, zone)


def build_history(
    workspace_id: str, by: str, first_day: str, months: list[str],
    tables: Sequence[Mapping[str, Aggregate]],
) -> History:
    """A :class:`History` from the breakdown tables of ``months``. Pure."""
    sums: dict[str, list[int]] = {}
    for table in tables:
        for name, a in table.items():
            if by == "day" and name < first_day:
                continue
            row = sums.setdefault(name, [0] * 8)
            for i, value in enumerate((a.requests, a.errors, a.tokens, a.input_tokens,
                                       a.output_tokens, a.cost_nanos, a.unpriced,
                                       a.unpriced_nanos)):
                row[i] += value
    rows = {
        name: HistoryRow(
            request_count=r[0], error_count=r[1], tokens_used=r[2], input_tokens=r[3],
            output_tokens=r[4], cost_usd=priced_usd(Aggregate(*r)), unpriced_count=r[6],
            unpriced_charge_usd=float(from_nanos(r[7])), charged_usd=float(from_nanos(r[5] + r[7])),
        )
        for name, r in sorted(sums.items())
    }
    return History(
        workspace_id=workspace_id, by=by, since=first_day, months=months, rows=rows,
        total_cost_usd=float(from_nanos(sum(r[5] + r[7] for r in sums.values()))),
        total_requests=sum(r[0] for r in sums.values()),
    )


def priced_usd(a: Aggregate) -> float | None:
    """What the priced calls of a breakdown row cost; None when it has unpriced calls and
    nothing priced (a cost that was never known is not $0)."""
    if a.unpriced and not a.cost_nanos:
        return None
    return float(from_nanos(a.cost_nanos))


def activity(record: UsageRecord) -> Activity:
    """One record as a ``recent_activity`` entry (metadata only)."""
    stamp = record.timestamp or datetime.now(UTC)
    return Activity(
        timestamp=stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        model=record.model,
        api_method=record.api_method,
        tokens_used=record.total_tokens,
        success=record.success,
        cost_usd=None if record.cost is None else float(record.cost),
        status_code=record.status_code,
        latency_ms=record.latency_ms,
        estimated=record.estimated,
    )


def iso(moment: float) -> str:
    """Epoch seconds as the report's UTC timestamp, ``2025-09-05T09:31:27Z``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusSource(Protocol):
    """What a :class:`WorkspaceTracker` reads (a :class:`~quota_hooks.QuotaManager`)."""

    def status(self, workspace_id: str, *, enhanced: bool = True,
               recent: int | None = None) -> StatusReport: ...

    async def astatus(self, workspace_id: str, *, enhanced: bool = True,
                      recent: int | None = None) -> StatusReport: ...


class WorkspaceTracker:
    """One workspace's view of a manager (the seed guide's tracker:
    ``quota_manager.get_tracker(ws).get_status_data()``)."""

    def __init__(self, manager: StatusSource, workspace_id: str) -> None:
        self.manager = manager
        self.workspace_id = workspace_id

    def __repr__(self) -> str:
        return f"WorkspaceTracker({self.workspace_id!r})"

    def get_status_data(self) -> dict[str, Any]:
        """The seed status JSON as a dict, without ``enhanced_tracking``."""
        return self.manager.status(self.workspace_id, enhanced=False).to_dict(enhanced=False)

    def get_enhanced_status_data(self, recent: int | None = None) -> dict[str, Any]:
        """The seed status JSON with ``enhanced_tracking`` (models, methods, recent calls)."""
        return self.manager.status(self.workspace_id, recent=recent).to_dict()

    async def aget_status_data(self) -> dict[str, Any]:
        """Async :meth:`get_status_data`."""
        report = await self.manager.astatus(self.workspace_id, enhanced=False)
        return report.to_dict(enhanced=False)

    async def aget_enhanced_status_data(self, recent: int | None = None) -> dict[str, Any]:
        """Async :meth:`get_enhanced_status_data`."""
        return (await self.manager.astatus(self.workspace_id, recent=recent)).to_dict()
