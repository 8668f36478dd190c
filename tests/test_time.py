"""Time on every store: a wall clock that steps back never switches a window off (nor freezes
it for more than a window), a late caller (a ``now`` taken a moment before another's) never
makes a window forget a call, and a record's own timestamp decides where it counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_helpers import T0, dispose, make_store

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
                                 monthly_budget_usd=None), store=store, clock=clock,
                     alert_history=0)
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
                                 monthly_budget_usd=None), store=store, clock=clock,
                     alert_history=0)
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
                                 monthly_budget_usd=None), store=store, clock=clock,
                     alert_history=0)
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


# The managers of these tests keep no alert history, so that no background alert evaluation
# reads the store with a now taken before the test steps the clock (a caller from before a
# step back, which only the memory and SQLite stores are built for: see the last test).
def written(store: Store) -> None:
    """Wait for a batched store's writer (a no-op for the others)."""
    flush = getattr(store, "flush", None)
    if flush is not None:
        flush()


def rpm_policy() -> QuotaPolicy:
    return QuotaPolicy(rpm=100, rpd=None, tpm=None, tpd=None, monthly_budget_usd=None)


def test_a_step_back_after_a_later_read_still_counts_every_call(store: Store) -> None:
    """A read at a later now moved the memory window's start without moving its newest
    bucket; a step back behind that start then dropped every call (300 of 300 admitted at
    rpm=100)."""
    clock = ManualClock(T0 + 100)
    m = QuotaManager(rpm_policy(), store=store, clock=clock, alert_history=0)
    assert admitted(m, 1) == 1
    clock.set(T0 + 159)
    assert m.status("ws").requests_per_minute.current == 1
    clock.set(T0 + 90)  # 69 s back from the read, 10 s behind the call
    assert admitted(m, 300) == 99
    clock.set(T0 + 95)
    assert admitted(m, 300) == 0


@pytest.mark.parametrize("settle", ["record", "release"])
def test_a_call_settled_after_a_fold_never_takes_another_calls_count(
        store: Store, settle: str) -> None:
    """50 calls in flight when the clock steps back a whole window (their holds fold into
    now's bucket); 49 more later; then the 50 settle. Their undo once took the 49 calls'
    counts from now's bucket, while their own held on in the folded one."""
    clock = ManualClock(T0 + 100)
    m = QuotaManager(rpm_policy(), store=store, clock=clock, alert_history=0)
    held = [m.acquire("ws", ONE, wait=False) for _ in range(50)]
    clock.set(T0 + 30)  # 70 s back: a fold
    assert admitted(m, 1) == 1
    clock.set(T0 + 80)
    assert admitted(m, 100) == 49
    for reservation in held:
        if settle == "record":
            m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1),
                     reservation)
        else:
            m.release(reservation)
    written(store)
    clock.set(T0 + 95)  # the folded bucket has left; the 49 (and the 50 recorded) count
    counted = 49 + (50 if settle == "record" else 0)
    assert m.status("ws").requests_per_minute.current == counted
    assert admitted(m, 200) == 100 - counted


def test_a_release_long_after_a_fold_takes_its_own_hold_only(store: Store) -> None:
    """49 holds at T0+1000, the clock steps back 500 s (a fold into T0+500), 49 calls at
    T0+550, then the 49 holds are released: SQLite took them from the 49 calls' bucket (now's)
    while the holds sat on in the folded one, and admitted 100 once that one left."""
    clock = ManualClock(T0 + 1000.2)
    m = QuotaManager(rpm_policy(), store=store, clock=clock, alert_history=0)
    held = [m.acquire("ws", ONE, wait=False) for _ in range(49)]
    assert admitted(m, 1) == 1
    clock.set(T0 + 500.2)
    assert admitted(m, 1) == 1  # the fold: the 51 count for a minute from here
    clock.set(T0 + 550.2)
    assert admitted(m, 100) == 49
    for reservation in held:
        m.release(reservation)
    clock.set(T0 + 560.5)  # the folded bucket has left; the 49 calls of T0+550 count
    written(store)
    assert m.status("ws").requests_per_minute.current == 49
    assert admitted(m, 200) == 51


def test_records_after_a_later_read_and_a_step_back_are_all_counted(store: Store) -> None:
    """A read at a later now retired the memory window's hot bucket but left its fast path
    pointing at it: after a step back into that bucket's second, every record() raised
    inside the store (swallowed: tracking failed) and was lost, minute, day and month."""
    clock = ManualClock(T0 + 100.2)
    m = QuotaManager(QuotaPolicy(rpd=1000), store=store, clock=clock, alert_history=0)
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1000))
    clock.set(T0 + 165)
    m.status("ws")
    for i in range(50):
        clock.set(T0 + 100.5 + i * 0.009)
        m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1000))
    written(store)
    status = m.status("ws", enhanced=False)
    assert m.tracking_errors == 0
    assert (status.requests_per_day.current, status.tokens_per_day.current) == (51, 51_000)


def test_a_late_caller_refused_is_told_when_room_frees_up(store: Store) -> None:
    """A late caller (here 29.5 s behind the latest now) refused by a full window got no
    retry_after from the memory store, so acquire(wait=True) could not wait."""
    clock = ManualClock(T0 + 130.2)
    m = QuotaManager(QuotaPolicy(rpm=10, rpd=None, tpm=None, tpd=None,
                                 monthly_budget_usd=None), store=store, clock=clock,
                     alert_history=0)
    assert admitted(m, 10) == 10
    clock.set(T0 + 100.5)
    with pytest.raises(RateLimitedError) as refused:
        m.acquire("ws", ONE, wait=False)
    assert refused.value.retry_after == pytest.approx(89.5)  # the calls leave at T0+190


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_caller_from_before_a_step_back_never_wipes_the_window(
        kind: str, tmp_path: Path) -> None:
    """After a step back of a whole window folds the calls into now's bucket, one op still
    carrying a now from before the step (a thread descheduled across it) slid the window
    past the folded bucket and deleted it: every call of the minute forgotten. A bucket the
    window leaves is now kept one more window. (Redis reads the server's TIME inside each
    script by default, so no op of it can carry a now from before a step.)"""
    store = make_store(kind, tmp_path)
    try:
        clock, late = ManualClock(T0 + 100.2), ManualClock(T0 + 100.5)
        m = QuotaManager(rpm_policy(), store=store, clock=clock, alert_history=0)
        other = QuotaManager(rpm_policy(), store=store, clock=late, seed_policies=False)
        assert admitted(m, 100) == 100
        clock.set(T0 + 30.2)  # the clock steps back 70 s
        assert admitted(m, 1) == 0
        assert admitted(other, 1) == 1  # from before the step: its window is empty
        assert m.status("ws").requests_per_minute.current == 101
        assert admitted(m, 200) == 0
        other.close()
    finally:
        dispose(store)


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
        ring = RollingCounter(window, 1)
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
