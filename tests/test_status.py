from __future__ import annotations

from decimal import Decimal

import pytest

from quota_hooks import QuotaManager, QuotaPolicy, QuotaStatus, UsageRecord
from quota_hooks.status import AlertLevel, evaluate
from quota_hooks.testing import ManualClock

pytestmark = pytest.mark.unit

LIMIT_KEYS = {"current", "limit", "percentage"}


def test_seed_json_shape_key_by_key(manager: QuotaManager) -> None:
    manager.record(
        UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=20, output_tokens=4)
    )
    manager.record(
        UsageRecord(
            workspace_id="ws",
            model="text-embedding-3-small",
            api_method="embeddings",
            input_tokens=8,
        )
    )
    manager.record(
        UsageRecord(
            workspace_id="ws",
            model="gpt-4o-mini",
            success=False,
            status_code=500,
            error_type="InternalServerError",
        )
    )
    plain = manager.get_tracker("ws").get_status_data()
    assert set(plain) == {
        "workspace_id",
        "status",
        "requests_per_minute",
        "requests_per_day",
        "tokens_per_minute",
        "tokens_per_day",
        "monthly_budget_usd",
        "alert_level",
        "updated_at",
        "provider_limits",
        "thresholds",
        "alert_thresholds",
        "policy",
        "unpriced",
    }
    assert plain["policy"] == {"source": "store", "key": "*", "version": 1}
    for key in (
        "requests_per_minute",
        "requests_per_day",
        "tokens_per_minute",
        "tokens_per_day",
        "monthly_budget_usd",
    ):
        assert set(plain[key]) == LIMIT_KEYS
    assert plain["requests_per_minute"] == {"current": 3, "limit": 500, "percentage": 0.6}
    assert plain["tokens_per_minute"] == {"current": 32, "limit": 150000, "percentage": 0.02}
    assert plain["status"] == "normal" and plain["alert_level"] == "none"
    assert plain["updated_at"] == "2026-01-01T00:00:00Z"

    enhanced = manager.get_tracker("ws").get_enhanced_status_data()
    tracking = enhanced["enhanced_tracking"]
    assert set(tracking) == {"models_breakdown", "api_methods_breakdown", "recent_activity"}
    mini = tracking["models_breakdown"]["gpt-4o-mini"]
    assert (mini["request_count"], mini["tokens_used"], mini["error_count"]) == (2, 24, 1)
    assert mini["cost_usd"] == pytest.approx((20 * 0.15 + 4 * 0.6) / 1e6)
    methods = tracking["api_methods_breakdown"]
    assert methods["chat.completions"]["request_count"] == 2
    assert methods["chat.completions"]["error_count"] == 1
    assert methods["embeddings"] == {
        "request_count": 1,
        "error_count": 0,
        "tokens_used": 8,
        "cost_usd": pytest.approx(8 * 0.02 / 1e6),
        "unpriced_count": 0,
        "unpriced_charge_usd": 0.0,
    }
    recent = tracking["recent_activity"]
    assert [r["success"] for r in recent] == [False, True, True]  # newest first
    assert {"timestamp", "model", "api_method", "tokens_used", "success"} <= set(recent[0])
    assert recent[1]["api_method"] == "embeddings" and recent[1]["tokens_used"] == 8


def test_recent_activity_defaults_to_ten_and_is_configurable(manager: QuotaManager) -> None:
    for i in range(15):
        manager.record(UsageRecord(workspace_id="ws", model="gpt-4o", input_tokens=i + 1))
    tracker = manager.get_tracker("ws")
    recent = tracker.get_enhanced_status_data()["enhanced_tracking"]["recent_activity"]
    assert [r["tokens_used"] for r in recent] == list(range(15, 5, -1))
    assert (
        len(tracker.get_enhanced_status_data(recent=3)["enhanced_tracking"]["recent_activity"]) == 3
    )


@pytest.mark.parametrize(
    ("fractions", "limited", "degraded", "status", "level"),
    [
        ({"rpm": 0.1}, False, False, QuotaStatus.NORMAL, AlertLevel.NONE),
        ({"rpm": 0.8}, False, False, QuotaStatus.WARNING, AlertLevel.WARNING),
        ({"tpd": 0.95}, False, False, QuotaStatus.WARNING, AlertLevel.CRITICAL),
        ({"rpm": 0.8}, False, True, QuotaStatus.DEGRADED, AlertLevel.WARNING),
        ({"rpm": 1.0}, False, True, QuotaStatus.RATE_LIMITED, AlertLevel.CRITICAL),
        ({"rpm": 0.1}, True, True, QuotaStatus.RATE_LIMITED, AlertLevel.NONE),
        (
            {"monthly_budget_usd": 1.0, "rpm": 1.0},
            True,
            True,
            QuotaStatus.QUOTA_EXCEEDED,
            AlertLevel.CRITICAL,
        ),
        ({"monthly_budget_usd": 0.999}, False, False, QuotaStatus.WARNING, AlertLevel.CRITICAL),
        ({}, False, False, QuotaStatus.NORMAL, AlertLevel.NONE),
    ],
)
def test_precedence(
    fractions: dict[str, float],
    limited: bool,
    degraded: bool,
    status: QuotaStatus,
    level: AlertLevel,
) -> None:
    got = evaluate(
        {metric: Decimal(str(fraction)) * 100 for metric, fraction in fractions.items()},
        warning_percent=80,
        critical_percent=95,
        rate_limited_recently=limited,
        degraded=degraded,
    )
    assert got == (status, level)


def test_thresholds_cross_exactly(clock: ManualClock) -> None:
    manager = QuotaManager(QuotaPolicy(rpm=100), clock=clock)
    for _ in range(79):
        manager.record(UsageRecord(workspace_id="ws", api_method="embeddings"))
    assert manager.status("ws").alert_level is AlertLevel.NONE
    manager.record(UsageRecord(workspace_id="ws", api_method="embeddings"))
    assert manager.status("ws").alert_level is AlertLevel.WARNING
    for _ in range(15):
        manager.record(UsageRecord(workspace_id="ws", api_method="embeddings"))
    assert manager.status("ws").alert_level is AlertLevel.CRITICAL
    for _ in range(5):
        manager.record(UsageRecord(workspace_id="ws", api_method="embeddings"))
    assert manager.status("ws").status is QuotaStatus.RATE_LIMITED


def test_provider_429_marks_rate_limited_for_60_seconds(
    clock: ManualClock, manager: QuotaManager
) -> None:
    manager.record(UsageRecord(workspace_id="ws", success=False, status_code=429))
    assert manager.status("ws").status is QuotaStatus.RATE_LIMITED
    clock.advance(60)
    assert manager.status("ws").status is QuotaStatus.NORMAL


def test_majority_of_failures_is_degraded(clock: ManualClock, manager: QuotaManager) -> None:
    manager.record(UsageRecord(workspace_id="ws", input_tokens=1))
    manager.record(UsageRecord(workspace_id="ws", success=False, status_code=500))
    assert manager.status("ws").status is QuotaStatus.NORMAL  # half is not over half
    manager.record(UsageRecord(workspace_id="ws", success=False, status_code=503))
    assert manager.status("ws").status is QuotaStatus.DEGRADED
    clock.advance(60)
    assert manager.status("ws").status is QuotaStatus.NORMAL


def test_budget_exhausted_is_quota_exceeded(clock: ManualClock) -> None:
    manager = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal("0.01")), clock=clock)
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o", input_tokens=4_000))
    report = manager.status("ws")
    assert report.monthly_budget_usd.current == 0.01
    assert report.monthly_budget_usd.percentage == 100.0
    assert report.status is QuotaStatus.QUOTA_EXCEEDED


def test_unlimited_metrics_report_null_limit(clock: ManualClock) -> None:
    manager = QuotaManager(QuotaPolicy.unlimited(), clock=clock)
    manager.record(UsageRecord(workspace_id="ws", input_tokens=5))
    data = manager.get_tracker("ws").get_status_data()
    assert data["tokens_per_minute"] == {"current": 5, "limit": None, "percentage": 0.0}
    assert data["status"] == "normal"


def test_a_limit_of_zero_is_full_for_the_status_and_the_alerts_alike() -> None:
    from quota_hooks import QuotaManager, QuotaPolicy, RateLimitedError
    from quota_hooks.alerts import Alert
    from quota_hooks.usage import Estimate, UsageRecord

    seen: list[Alert] = []
    m = QuotaManager(QuotaPolicy(rpm=0, rpd=None, tpm=None, tpd=None, monthly_budget_usd=None),
                     sinks=[seen.append])
    with pytest.raises(RateLimitedError):
        m.acquire("ws", Estimate(model="gpt-4o-mini", api_method="chat.completions",
                                 input_tokens=1))
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", api_method="models"))
    report = m.status("ws")
    assert (report.status.value, report.requests_per_minute.percentage) == ("rate_limited", 100)
    assert m.drain()
    rpm = [(a.kind.value, a.percentage) for a in seen if a.metric == "rpm"]
    assert rpm == [("warning", 100.0), ("critical", 100.0)]  # the same 100 %, once each
    m.close()
