from __future__ import annotations

from datetime import UTC, datetime, timezone

import pytest

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.testing import ManualClock
from quota_hooks.windows import DAY, MINUTE, RollingCounter, month_bounds, month_key

pytestmark = pytest.mark.unit


def ts(*args: int, tz: timezone = UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def test_minute_window_edges() -> None:
    ring = RollingCounter(MINUTE, 1)
    ring.add(MINUTE.bucket(100.0), [1], 100.0)
    assert ring.totals(100.0) == [1]
    assert ring.totals(159.999) == [1]
    assert ring.totals(160.0) == [0]


def test_day_window_edges() -> None:
    start = ts(2026, 3, 1)
    ring = RollingCounter(DAY, 1)
    ring.add(DAY.bucket(start), [5], start)
    assert ring.totals(start + 86_400 - 0.001) == [5]
    assert ring.totals(start + 86_400) == [0]


def test_ring_memory_is_bounded_and_old_adds_are_ignored() -> None:
    ring = RollingCounter(MINUTE, 2)
    for second in range(10_000):
        ring.add(second, [1, 2], float(second))
    assert len(ring) == 120  # the window's buckets, and one window retired
    assert ring.totals(9_999.0) == [60, 120]
    assert ring.add(100, [1, 1], 9_999.0) is False  # long gone
    assert ring.totals(9_999.0) == [60, 120]


def test_an_idle_window_holds_no_buckets() -> None:
    """Only buckets that hold counts exist: a day window with one call holds one bucket, and
    none once it has slid a window past it, its retirement over (before, every scope held
    1,440 buckets up front)."""
    ring = RollingCounter(DAY, 2)
    assert len(ring) == 0
    ring.add(DAY.bucket(1e9), [1, 5], 1e9)
    assert len(ring) == 1
    assert ring.totals(1e9 + DAY.seconds) == [0, 0] and len(ring) == 1  # retired
    assert ring.totals(1e9 + 2 * DAY.seconds) == [0, 0] and len(ring) == 0


def test_month_key_and_bounds_utc() -> None:
    assert month_key(ts(2026, 1, 31, 23, 59, 59)) == "2026-01"
    assert month_key(ts(2026, 2, 1)) == "2026-02"
    start, end = month_bounds(ts(2028, 2, 29, 12))  # leap day
    assert (start, end) == (ts(2028, 2, 1), ts(2028, 3, 1))
    assert month_key(ts(2028, 2, 29, 23, 59, 59)) == "2028-02"
    assert month_key(ts(2028, 3, 1)) == "2028-03"
    assert month_bounds(ts(2026, 12, 31, 23))[1] == ts(2027, 1, 1)


def test_month_in_a_non_utc_zone() -> None:
    # 2026-01-31T23:30Z is already February in Tokyo (UTC+9) and still January in New York.
    moment = ts(2026, 1, 31, 23, 30)
    assert month_key(moment, "Asia/Tokyo") == "2026-02"
    assert month_key(moment, "America/New_York") == "2026-01"
    start, _ = month_bounds(moment, "Asia/Tokyo")
    assert start == ts(2026, 1, 31, 15)


def record(manager: QuotaManager, **kw: object) -> None:
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", **kw))  # type: ignore[arg-type]


def test_manager_rpm_and_tpm_roll_off_exactly(clock: ManualClock, manager: QuotaManager) -> None:
    record(manager, input_tokens=100, output_tokens=10)
    clock.advance(59.999)
    report = manager.status("ws")
    assert report.requests_per_minute.current == 1
    assert report.tokens_per_minute.current == 110
    clock.advance(0.001)
    report = manager.status("ws")
    assert report.requests_per_minute.current == 0
    assert report.tokens_per_minute.current == 0
    assert report.requests_per_day.current == 1
    assert report.tokens_per_day.current == 110
    clock.advance(86_400 - 60)
    assert manager.status("ws").requests_per_day.current == 0


def test_budget_resets_at_month_end_in_policy_zone() -> None:
    clock = ManualClock(ts(2026, 2, 28, 14, 59, 59))  # 23:59:59 in Tokyo
    manager = QuotaManager(QuotaPolicy(timezone="Asia/Tokyo"), clock=clock)
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o", input_tokens=1_000_000))
    assert manager.status("ws").monthly_budget_usd.current == pytest.approx(2.5)
    clock.advance(1)  # March in Tokyo
    assert manager.status("ws").monthly_budget_usd.current == 0
    assert manager.status("ws").requests_per_minute.current == 1  # windows do not reset


def test_leap_day_counts_in_february() -> None:
    clock = ManualClock(ts(2028, 2, 29, 23, 59, 59))
    manager = QuotaManager(clock=clock)
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o", input_tokens=400_000))
    assert manager.status("ws").monthly_budget_usd.current == pytest.approx(1.0)
    clock.advance(1)
    assert manager.status("ws").monthly_budget_usd.current == 0


def test_running_sums_match_a_recount_under_random_traffic() -> None:
    import random

    from quota_hooks.windows import DAY, MINUTE, RollingCounter

    rng = random.Random(7)
    for window in (MINUTE, DAY):
        counter = RollingCounter(window, 2)
        buckets: dict[int, list[int]] = {}  # what each accepted bucket holds
        now = 1_767_225_600.0
        for _ in range(5000):
            now += rng.choice([0, 0.3, 1, 7, window.bucket_seconds * rng.randint(0, 90)])
            bucket = window.bucket(now) - rng.choice([0, 0, 0, 1, 5, window.buckets])
            a, b = rng.randint(-3, 9), rng.randint(0, 100)
            if counter.add(bucket, (a, b), now):
                held = buckets.setdefault(bucket, [0, 0])
                held[0] = max(0, held[0] + a)  # a bucket never goes below zero
                held[1] += b
            oldest, newest = window.oldest(now), window.bucket(now)
            inside = [v for k, v in buckets.items() if oldest <= k <= newest]
            assert counter.totals(now) == [sum(v[0] for v in inside), sum(v[1] for v in inside)]


def test_parse_since() -> None:
    from quota_hooks.windows import parse_since

    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert parse_since("30d", now) == now - 30 * 86_400
    assert parse_since("12h", now) == now - 12 * 3600
    assert parse_since("90m", now) == now - 90 * 60
    assert parse_since("2w", now) == now - 14 * 86_400
    assert parse_since("2025-12-31", now) == now - 86_400
    assert parse_since("2025-12-31T23:00:00Z", now) == now - 3600
    assert parse_since("2025-12-31T23:00:00+01:00", now) == now - 7200
    assert parse_since("1767225000", now) == 1_767_225_000.0
    for bad in ("", "yesterday", "-3d", "3x", "2026-13-01"):
        with pytest.raises(ValueError, match="since must be like"):
            parse_since(bad, now)


def test_day_key_follows_the_zone() -> None:
    from quota_hooks.windows import day_key

    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert day_key(now) == "2026-01-01"
    assert day_key(now, "America/New_York") == "2025-12-31"
