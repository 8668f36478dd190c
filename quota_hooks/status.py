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

from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict

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
    "UnpricedUsage",
    "evaluate",
    "limit_usage",
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
    alert_level: AlertLevel
    updated_at: str
    provider_limits: dict[str, dict[str, str]] = {}
    """The provider's own latest ``x-ratelimit-*`` headers, per provider."""
    thresholds: dict[str, float] = {}
    """The policy's ``warning`` and ``critical`` percentages."""
    unpriced: UnpricedUsage = UnpricedUsage()
    """How much of ``monthly_budget_usd.current`` is charged for calls without a price."""
    enhanced_tracking: EnhancedTracking | None = None

    def to_dict(self, *, enhanced: bool = True) -> dict[str, Any]:
        """The JSON-ready dict; without ``enhanced_tracking`` when ``enhanced`` is False."""
        data = self.model_dump(mode="json", exclude={"enhanced_tracking"})
        if enhanced and self.enhanced_tracking is not None:
            data["enhanced_tracking"] = self.enhanced_tracking.model_dump(mode="json")
        return data

    @property
    def limits(self) -> dict[str, LimitUsage]:
        """The five limit usages keyed by policy metric (``rpm`` ... ``monthly_budget_usd``)."""
        return {
            "rpm": self.requests_per_minute,
            "rpd": self.requests_per_day,
            "tpm": self.tokens_per_minute,
            "tpd": self.tokens_per_day,
            "monthly_budget_usd": self.monthly_budget_usd,
        }


def used_fraction(current: int | Decimal, limit: int | Decimal) -> float:
    """``current / limit`` computed exactly, then as a float (1.0 is at the limit).

    A limit of 0 allows nothing, so it is always fully used.
    """
    if limit <= 0:
        return 1.0
    return float(Decimal(current) / Decimal(limit))


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
        percentage=round(used_fraction(current, limit) * 100, 2),
    )


def evaluate(
    fractions: dict[str, float],
    *,
    warning_percent: float,
    critical_percent: float,
    rate_limited_recently: bool,
    degraded: bool,
) -> tuple[QuotaStatus, AlertLevel]:
    """The status and alert level from each limit's used fraction (1.0 = at the limit).

    ``fractions`` maps ``rpm``/``rpd``/``tpm``/``tpd``/``monthly_budget_usd`` to exact used
    fractions; unlimited metrics are left out.
    """
    highest = max(fractions.values(), default=0.0)
    if highest * 100 >= critical_percent:
        level = AlertLevel.CRITICAL
    elif highest * 100 >= warning_percent:
        level = AlertLevel.WARNING
    else:
        level = AlertLevel.NONE

    if fractions.get("monthly_budget_usd", 0.0) >= 1.0:
        status = QuotaStatus.QUOTA_EXCEEDED
    elif rate_limited_recently or any(
        fractions.get(metric, 0.0) >= 1.0 for metric in ("rpm", "rpd", "tpm", "tpd")
    ):
        status = QuotaStatus.RATE_LIMITED
    elif degraded:
        status = QuotaStatus.DEGRADED
    elif level is not AlertLevel.NONE:
        status = QuotaStatus.WARNING
    else:
        status = QuotaStatus.NORMAL
    return status, level
