"""Time on every store: a wall clock that steps back never switches a window off (nor freezes
it for more than a window), a late caller (a ``now`` taken a moment before another's) never
makes a window forget a call, and a record's own timestamp decides where it counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import T0

from quota_hooks import Estimate, QuotaManager, QuotaPolicy, RateLimitedError, UsageRecord
from quota_hooks.storage import Store
from quota_hooks.testing import ManualClock
from quota_hooks.windows import DAY, MINUTE, RollingCounter

pytestmark = pytest.mark.unit

ONE = Estimate(model="gpt-4o-mini", input_tokens=1)


def admitted(m: QuotaManager, n: int) -> int:
    count = 0
    for _ in range(n):
        try:
            reservation = m.acquire("ws", ONE, wait=False)
        except RateLimitedError:
            continue
        m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1),
                 reservation)
        count += 1
    return count


@pytest.mark.parametrize("step", [3600.0, 30.0, 86_400.0])
def test_a_clock_stepping_back_never_switches_rpm_off(store: Store, step: float) -> None:
    """The issue's measurement: after a 1-hour NTP step back, memory admitted 500 of 500 at
    rpm=100 and SQLite up to twice the limit."""
    clock = ManualClock(T0 + 30)
    m = QuotaManager(QuotaPolicy(rpm=100, rpd=None, tpm=None, tpd=None,
                                 monthly_budget_usd=None), store=store, clock=clock)
    assert admitted(m, 100) == 100
    clock.set(T0 + 30 - step)  # the wall clock steps back
    assert admitted(m, 500) == 0  # the last minute's calls still count
    assert m.status("ws").requests_per_minute.current == 100
    # A step back of a window or more folds the calls into now: a minute on the new clock,
    # the window moves on. A smaller one is a late clock: the calls count until a minute
    # after their own time (at most one window longer: never frozen).
    clock.advance(61 + (step if step < 60 else 0))
    assert admitted(m, 500) == 100
    clock.advance(61)
    assert admitted(m, 50) == 50


def test_the_daily_window_holds_across_a_step_back(store: Store) -> None:
    clock = ManualClock(T0 + 3600)
    m = QuotaManager(QuotaPolicy(rpm=None, rpd=10, tpm=None, tpd=None,
                                 monthly_budget_usd=None), store=store, clock=clock)
    assert admitted(m, 10) == 10
    clock.set(T0)  # an hour back: less than the day window, so nothing moves
    assert admitted(m, 10) == 0
    clock.advance(86_400 + 120)  # a day on the new clock: the calls are 23 h 58 min old
    assert admitted(m, 10) == 0
    clock.advance(3_600)  # a day after their own time
    assert admitted(m, 20) == 10
    # Two days back is more than the window: the day's calls fold into now's bucket and
    # count for one more day, then they are gone.
    clock.set(clock() - 2 * 86_400)
    assert admitted(m, 10) == 0
    clock.advance(86_400 + 120)
    assert admitted(m, 20) == 10


def test_a_late_reader_never_makes_a_window_forget(store: Store) -> None:
    """A read whose ``now`` was taken a few seconds before the newest call (a thread that
    was descheduled, another process's batch that waited) once folded the newer buckets into
    its own older one: they then left the window early, and the limit let calls through."""
    clock = ManualClock(T0 + 30)
    m = QuotaManager(QuotaPolicy(rpm=100, rpd=None, tpm=None, tpd=None,
                                 monthly_budget_usd=None), store=store, clock=clock)
    assert admitted(m, 100) == 100
    clock.set(T0 + 20)  # a late reader, ten seconds behind, and a late writer
    assert m.status("ws").requests_per_minute.current == 100
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1))
    assert m.status("ws").requests_per_minute.current == 101
    clock.set(T0 + 31)  # and a late writer's reservation, refused
    assert admitted(m, 1) == 0
    clock.set(T0 + 85)  # 55 s after the calls: they still count
    assert admitted(m, 50) == 0
    assert m.status("ws").requests_per_minute.current == 100
    clock.set(T0 + 91)  # a minute after them: the window has moved on
    assert admitted(m, 50) == 50


def test_a_record_counts_where_its_timestamp_says(store: Store) -> None:
    """A record dated 25 days ago counts in its month and its day, never in today's
    windows; one dated in the future counts now."""
    clock = ManualClock(datetime(2026, 1, 28, 12, 0, tzinfo=UTC))
    m = QuotaManager(QuotaPolicy.unlimited(), store=store, clock=clock)
    old = clock.datetime() - timedelta(days=25)
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1_000,
                         timestamp=old))
    status = m.status("ws")
    assert status.requests_per_day.current == 0 and status.tokens_per_day.current == 0
    assert status.tokens_per_minute.current == 0
    assert status.monthly_budget_usd.current > 0  # still January's spend
    days = m.history("ws", since=clock() - 30 * 86_400).rows
    assert list(days) == ["2026-01-03"] and days["2026-01-03"].tokens_used == 1_000
    # Last month's record counts in last month's budget, not this one's.
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1_000,
                         timestamp=datetime(2025, 12, 31, 23, 0, tzinfo=UTC)))
    assert m.status("ws").monthly_budget_usd.current == status.monthly_budget_usd.current
    # A record from the future (another host's clock) counts now.
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=7,
                         timestamp=clock.datetime() + timedelta(hours=2)))
    assert m.status("ws").tokens_per_minute.current == 7


def test_the_ring_folds_what_a_step_back_left_in_the_future() -> None:
    for window in (MINUTE, DAY):
        ring = RollingCounter(window, 1)
        now = T0 + 7 * window.seconds
        ring.add(window.bucket(now), [5], now)
        # Ten buckets back: a late caller. Nothing moves; its call goes in its own bucket.
        late = now - 10 * window.bucket_seconds
        assert ring.totals(late) == [5]
        assert ring.add(window.bucket(late), [1], late)
        assert ring.totals(late) == [6]
        assert ring.totals(late + window.seconds) == [5]  # the late call has left
        assert ring.totals(now + window.seconds - window.bucket_seconds) == [5]
        assert ring.totals(now + window.seconds) == [0]  # a window after their own time
        # A whole window back: a clock that stepped back. Everything held joins now's
        # bucket and counts for one more whole window from there.
        now += window.seconds
        ring.add(window.bucket(now), [5], now)
        back = now - window.seconds
        assert ring.totals(back) == [5]
        assert ring.add(window.bucket(back), [1], back)
        assert ring.totals(back) == [6]
        later = back + window.seconds - window.bucket_seconds
        assert ring.totals(later) == [6]  # a whole window from the fold
        assert ring.totals(later + window.bucket_seconds) == [0]  # and then gone
        # A write "from the future" lands in now's bucket, so it cannot evict a bucket.
        ring.add(window.bucket(now) + 1000, [3], later)
        assert ring.totals(later) == [3]
