from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import types
from decimal import Decimal

import pytest

import quota_hooks
from quota_hooks import (
    ConfigurationError,
    QuotaManager,
    QuotaPolicy,
    QuotaStatus,
    StorageError,
    UsageRecord,
)
from quota_hooks.storage import MemoryStore
from quota_hooks.storage.base import UsageEntry
from quota_hooks.testing import ManualClock

pytestmark = pytest.mark.unit


def test_import_pulls_in_no_framework() -> None:
    code = (
        "import sys, quota_hooks, quota_hooks.manager, quota_hooks.testing, quota_hooks.cli;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('openai', 'litellm', 'langchain_core', 'langchain', 'httpx', 'httpx2', 'redis', "
        "'fastapi'));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_all_is_sorted_and_complete() -> None:
    names = quota_hooks.__all__
    assert names == sorted(names)
    public = {  # submodules are attributes once imported (by any test): not API names
        n for n in dir(quota_hooks)
        if not n.startswith("_") and not isinstance(getattr(quota_hooks, n), types.ModuleType)
    } - {"annotations"}
    assert public == set(names)
    for name in names:
        assert getattr(quota_hooks, name) is not None


def test_seed_lazy_quota_manager_is_configured_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from quota_hooks import manager as manager_module

    monkeypatch.setenv("OPENAI_RATE_LIMIT_PER_MINUTE", "7")
    manager_module.set_default_manager(None)
    try:
        from quota_hooks.manager import quota_manager  # type: ignore[attr-defined]

        assert quota_manager.default_policy.rpm == 7
        tracker = quota_manager.get_tracker("test")
        assert tracker.get_status_data()["requests_per_minute"]["limit"] == 7
        assert manager_module.get_default_manager() is quota_manager
    finally:
        manager_module.set_default_manager(None)


def test_bad_env_fails_at_start_naming_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_DAILY_TOKEN_LIMIT", "2M")
    with pytest.raises(ConfigurationError, match="OPENAI_DAILY_TOKEN_LIMIT='2M'"):
        QuotaManager.from_env()
    monkeypatch.delenv("OPENAI_DAILY_TOKEN_LIMIT")
    monkeypatch.setenv("QUOTA_HOOKS_STORE", "mongo://x")
    with pytest.raises(ConfigurationError, match=r"QUOTA_HOOKS_STORE.*mongo"):
        QuotaManager.from_env()


def test_per_workspace_policies(clock: ManualClock) -> None:
    small = QuotaPolicy(rpm=2)
    manager = QuotaManager(default_policy=QuotaPolicy(rpm=100), policies={"a": small}, clock=clock)
    for ws in ("a", "b"):
        manager.record(UsageRecord(workspace_id=ws))
        manager.record(UsageRecord(workspace_id=ws))
    assert manager.status("a").status is QuotaStatus.RATE_LIMITED
    assert manager.status("b").status is QuotaStatus.NORMAL
    assert manager.workspaces() == ["a", "b"]
    with pytest.raises(ConfigurationError):
        QuotaManager(QuotaPolicy(), default_policy=QuotaPolicy())
    with pytest.raises(ConfigurationError, match="recent_limit"):
        QuotaManager(recent_limit=-1)


def test_unmetered_methods_are_shown_but_not_limited(manager: QuotaManager) -> None:
    manager.record(UsageRecord(workspace_id="ws", api_method="models"))
    manager.record(UsageRecord(workspace_id="ws", api_method="files"))
    report = manager.status("ws")
    assert report.requests_per_minute.current == 0
    assert report.enhanced_tracking is not None
    assert report.enhanced_tracking.api_methods_breakdown["models"].request_count == 1


def test_cost_from_provider_is_kept(manager: QuotaManager) -> None:
    manager.record(
        UsageRecord(
            workspace_id="ws",
            model="gpt-4o",
            input_tokens=1,
            cost=Decimal("0.5"),
            price_source="litellm",
        )
    )
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o", input_tokens=1_000))
    report = manager.status("ws")
    assert report.monthly_budget_usd.current == 0.5025
    stored = manager.store.recent("workspace:ws", 2)
    assert [(r.cost, r.price_source) for r in stored] == [
        (Decimal("0.0025"), manager.prices.cost(stored[0].with_cost(None, None)).source),
        (Decimal("0.5"), "litellm"),
    ]


def test_scopes_are_counted_separately(manager: QuotaManager) -> None:
    manager.record(UsageRecord(workspace_id="ws", input_tokens=5, scopes={"team": "ml"}))
    clock_now = manager.now()
    counters = manager.store.counters("team:ml", clock_now, "2026-01")
    assert counters.tokens_minute == 5 and counters.requests_minute == 1


class BrokenStore(MemoryStore):
    def commit(self, entry: UsageEntry, reservation: object = None) -> None:  # type: ignore[override]
        raise OSError("disk on fire")

    async def acommit(self, entry: UsageEntry, reservation: object = None) -> None:  # type: ignore[override]
        raise OSError("disk on fire")

    def recent(self, scope: str, n: int) -> list[UsageRecord]:
        raise OSError("disk on fire")


async def test_tracking_failure_never_raises_and_shows_degraded(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    manager = QuotaManager(store=BrokenStore(), clock=clock)
    with caplog.at_level(logging.WARNING, logger="quota_hooks"):
        for _ in range(3):
            manager.record(UsageRecord(workspace_id="ws", input_tokens=1))
        await manager.arecord(UsageRecord(workspace_id="ws", input_tokens=1))
    assert manager.tracking_errors == 4
    assert len([r for r in caplog.records if "tracking failed" in r.getMessage()]) == 1
    assert manager.status("ws", enhanced=False).status is QuotaStatus.DEGRADED
    with pytest.raises(StorageError, match="disk on fire"):
        manager.status("ws")
    clock.advance(300)
    assert manager.status("ws", enhanced=False).status is QuotaStatus.NORMAL


@pytest.mark.slow
def test_concurrency_totals_are_exact(clock: ManualClock) -> None:
    manager = QuotaManager(QuotaPolicy.unlimited(), clock=clock)
    per_worker = 10_000
    record = UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=3, output_tokens=2)

    def thread_worker() -> None:
        for _ in range(per_worker):
            manager.record(record)

    async def task_worker() -> None:
        for i in range(per_worker):
            await manager.arecord(record)
            if i % 100 == 0:
                await asyncio.sleep(0)

    async def tasks() -> None:
        await asyncio.gather(*(task_worker() for _ in range(8)))

    threads = [threading.Thread(target=thread_worker) for _ in range(8)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()

    total = 16 * per_worker
    report = manager.status("ws")
    assert report.requests_per_minute.current == total
    assert report.tokens_per_day.current == total * 5
    assert report.enhanced_tracking is not None
    model = report.enhanced_tracking.models_breakdown["gpt-4o-mini"]
    assert model.request_count == total and model.tokens_used == total * 5
    # exact money: 160,000 x (3 x 0.15 + 2 x 0.60) / 1M = $0.264
    assert (
        manager.store.counters("workspace:ws", clock(), "2026-01").cost_month_nanos == 264_000_000
    )


async def test_async_status_matches_sync(manager: QuotaManager) -> None:
    await manager.arecord(UsageRecord(workspace_id="ws", model="gpt-4o", input_tokens=10))
    tracker = manager.get_tracker("ws")
    assert await tracker.aget_enhanced_status_data() == tracker.get_enhanced_status_data()
    assert await tracker.aget_status_data() == tracker.get_status_data()
    assert await manager.aworkspaces() == ["ws"]


def test_history_spans_months_and_counts_days_exactly() -> None:
    clock = ManualClock(1_767_225_600.0 - 2 * 86_400)  # 2025-12-30T00:00:00Z
    manager = QuotaManager(QuotaPolicy(), clock=clock)
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o", input_tokens=1000))
    clock.advance(3 * 86_400)  # 2026-01-02
    for _ in range(2):
        manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=100))
    days = manager.history("ws", by="day")
    assert days.months == ["2025-12", "2026-01"]
    assert {d: r.request_count for d, r in days.rows.items()} == {
        "2025-12-30": 1, "2026-01-02": 2}
    assert days.total_requests == 3
    assert days.total_cost_usd == pytest.approx(0.0025 + 2 * 0.000015)
    recent = manager.history("ws", since=clock() - 86_400, by="day")
    assert list(recent.rows) == ["2026-01-02"] and recent.months == ["2026-01"]
    models = manager.history("ws", by="model")
    assert {m: r.tokens_used for m, r in models.rows.items()} == {
        "gpt-4o": 1000, "gpt-4o-mini": 200}
    with pytest.raises(ValueError, match="since must be a time in the past"):
        manager.history("ws", since=clock() + 10)
