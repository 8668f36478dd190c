"""Forecasts on synthetic spend whose answers are worked out by hand in the comments."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from quota_hooks.forecast import (
    LIMIT_METHOD,
    SPEND_METHOD,
    Forecast,
    daily_charges,
    forecast_limit,
    forecast_spend,
    months_needed,
    period_bounds,
    period_key,
)
from quota_hooks.storage.base import Aggregate
from quota_hooks.windows import day_key

pytestmark = pytest.mark.unit

USD = 1_000_000_000  # nano-dollars
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
HOUR = 3600


def local(zone: str, *args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(zone)).timestamp()


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def days(last: date, charges: list[int]) -> dict[str, int]:
    """``charges`` (oldest first) on the days ending with ``last``."""
    n = len(charges)
    return {(last - timedelta(days=n - 1 - i)).isoformat(): c for i, c in enumerate(charges)}


# -- period bounds --------------------------------------------------------------------------

def test_day_bounds_across_dst_in_berlin() -> None:
    # 2026-03-29: clocks go 02:00 CET -> 03:00 CEST, a 23-hour day;
    # 2026-10-25: 03:00 CEST -> 02:00 CET, a 25-hour day.
    start, end = period_bounds(local(BERLIN, 2026, 3, 29, 12), "day", BERLIN)
    assert (start, end) == (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    assert end - start == 23 * HOUR
    start, end = period_bounds(local(BERLIN, 2026, 10, 25, 12), "day", BERLIN)
    assert (start, end) == (utc(2026, 10, 24, 22), utc(2026, 10, 25, 23))
    assert end - start == 25 * HOUR


def test_day_bounds_across_dst_in_new_york() -> None:
    # 2026-03-08 is 23 hours (EST -> EDT), 2026-11-01 is 25 (EDT -> EST).
    start, end = period_bounds(local(NEW_YORK, 2026, 3, 8, 9), "day", NEW_YORK)
    assert (start, end) == (utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    start, end = period_bounds(local(NEW_YORK, 2026, 11, 1, 1, 30), "day", NEW_YORK)
    assert (start, end) == (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    assert end - start == 25 * HOUR


def test_week_starts_monday_midnight_local() -> None:
    # 2026-03-23 is a Monday; that week holds Berlin's spring-forward Sunday: 7 days - 1 h.
    monday = local(BERLIN, 2026, 3, 23)
    next_monday = local(BERLIN, 2026, 3, 30)
    assert period_bounds(monday, "week", BERLIN) == (monday, next_monday)
    assert next_monday - monday == 7 * 86_400 - HOUR
    assert period_bounds(next_monday - 1, "week", BERLIN) == (monday, next_monday)
    assert period_bounds(next_monday, "week", BERLIN)[0] == next_monday
    # Monday 00:30 Berlin is still Sunday in UTC, but already the new Berlin week.
    assert period_bounds(local(BERLIN, 2026, 3, 30, 0, 30), "week", BERLIN)[0] == next_monday
    assert datetime.fromtimestamp(local(BERLIN, 2026, 3, 30, 0, 30), UTC).weekday() == 6
    assert period_key(monday, "week", BERLIN) == "2026-W13"


def test_month_end_december_to_january() -> None:
    last_second = local(BERLIN, 2026, 12, 31, 23, 59, 59)
    assert period_bounds(last_second, "month", BERLIN) == (
        local(BERLIN, 2026, 12, 1), local(BERLIN, 2027, 1, 1))
    assert period_bounds(last_second + 1, "month", BERLIN)[0] == local(BERLIN, 2027, 1, 1)
    assert period_key(last_second, "month", BERLIN) == "2026-12"
    # The week of 2027-01-01 (a Friday) starts on Monday 2026-12-28: ISO week 2026-W53.
    assert period_bounds(local(BERLIN, 2027, 1, 1, 10), "week", BERLIN) == (
        local(BERLIN, 2026, 12, 28), local(BERLIN, 2027, 1, 4))
    assert period_key(local(BERLIN, 2027, 1, 1, 10), "week", BERLIN) == "2026-W53"
    assert period_key(local(BERLIN, 2027, 1, 1, 10), "day", BERLIN) == "2027-01-01"
    # Berlin's March is 31 days less the spring-forward hour.
    start, end = period_bounds(local(BERLIN, 2026, 3, 15), "month", BERLIN)
    assert end - start == 31 * 86_400 - HOUR


@pytest.mark.parametrize("zone", [BERLIN, NEW_YORK, "America/Santiago"])
def test_day_bounds_agree_with_day_key(zone: str) -> None:
    # Santiago's DST starts at local midnight (00:00 -> 01:00): the day starts at 01:00.
    t, stop = utc(2026, 1, 1), utc(2027, 1, 1)
    while t < stop:
        start, end = period_bounds(t, "day", zone)
        assert start <= t < end
        assert day_key(start, zone) == day_key(t, zone) != day_key(start - 60, zone)
        assert day_key(end, zone) != day_key(t, zone)
        t += 5 * HOUR


def test_months_needed_reaches_back_for_the_trailing_days() -> None:
    assert months_needed(local(BERLIN, 2026, 4, 20), "month", BERLIN) == ["2026-04"]
    assert months_needed(local(BERLIN, 2026, 4, 3), "month", BERLIN) == ["2026-03", "2026-04"]
    assert months_needed(local(BERLIN, 2027, 1, 2), "week", BERLIN) == ["2026-12", "2027-01"]


def test_unknown_period_is_an_error() -> None:
    with pytest.raises(ValueError, match="period"):
        period_bounds(0.0, "year", "UTC")  # type: ignore[arg-type]


# -- spend ------------------------------------------------------------------------------------

def test_flat_spend_projects_the_month() -> None:
    # $1 a day in Europe/Berlin's April (30 days, no DST change); now is noon on the 10th,
    # so days 1-9 charged $1 and today $0.50. Rate: every full day $1 a day, today $0.50 over
    # half a day, also $1 a day -> $1/day. Spent 9.50; left: half of today + 20 days = 20.5
    # -> projected $30.
    now = local(BERLIN, 2026, 4, 10, 12)
    charges = days(date(2026, 4, 10), [USD] * 9 + [USD // 2])
    f = forecast_spend(now, "month", BERLIN, charges, 20 * USD)
    assert f.rate_nanos_per_day == USD
    assert f.spent_nanos == 9 * USD + USD // 2
    assert f.projected_nanos == 30 * USD
    assert f.history_days == 7
    # A $20 budget: 10.50 more is needed; today's other half gives 0.50, then 10 whole days
    # (the 11th-20th) -> it runs out at the end of the 20th, 2026-04-21 00:00 CEST.
    assert f.projected_exhaustion == local(BERLIN, 2026, 4, 21) == utc(2026, 4, 20, 22)
    assert f.will_exceed
    assert (f.start, f.end) == (local(BERLIN, 2026, 4, 1), local(BERLIN, 2026, 5, 1))


def test_budget_met_exactly_at_period_end_does_not_run_out() -> None:
    now = local(BERLIN, 2026, 4, 10, 12)
    charges = days(date(2026, 4, 10), [USD] * 9 + [USD // 2])
    exact = forecast_spend(now, "month", BERLIN, charges, 30 * USD)
    assert exact.projected_exhaustion is None and not exact.will_exceed
    # $29.99: $29 by the end of the 29th, the last 0.99 of a day into the 30th:
    # 0.99 * 86400 s = 85536 s = 23:45:36 CEST on the 30th.
    short = forecast_spend(now, "month", BERLIN, charges, 29 * USD + 99 * USD // 100)
    assert short.projected_exhaustion == local(BERLIN, 2026, 4, 30, 23, 45, 36)


def test_recency_weights_on_a_falling_ramp() -> None:
    # New York, now 06:00 on 2026-06-10 (a quarter of a 24-hour day). The 7 complete days
    # charged $7 (7 days ago) ... $1 (yesterday), and today $1 so far.
    # Weights 8 - age: sum(w * c) = 1*7 + 2*6 + 3*5 + 4*4 + 5*3 + 6*2 + 7*1 = 84, plus today
    # 8 * $1 = 92; sum(w * exposure) = 28 + 8 * 1/4 = 30 -> rate $92/30 = $46/15 a day.
    # The day period: spent $1 + 46/15 * 3/4 = $1 + $2.30 = $3.30.
    now = local(NEW_YORK, 2026, 6, 10, 6)
    charges = days(date(2026, 6, 10), [7 * USD, 6 * USD, 5 * USD, 4 * USD, 3 * USD,
                                       2 * USD, 1 * USD, 1 * USD])
    f = forecast_spend(now, "day", NEW_YORK, charges)
    assert f.rate_nanos_per_day == Fraction(46 * USD, 15)
    assert f.projected_nanos == 3_300_000_000
    # Unweighted, the mean would be $4 a day; at midnight (no partial day) the rate is 84/28.
    midnight = forecast_spend(local(NEW_YORK, 2026, 6, 10), "month", NEW_YORK,
                              {k: v for k, v in charges.items() if k != "2026-06-10"})
    assert midnight.rate_nanos_per_day == 3 * USD
    # June 3-9 charged $7+6+5+4+3+2+1 = $28; from the 10th's start, 21 days are left (the
    # 10th-30th) at $3 -> $28 + $63 = $91.
    assert midnight.spent_nanos == 28 * USD
    assert midnight.projected_nanos == 28 * USD + 21 * 3 * USD


def test_older_charges_beyond_the_window_do_not_count() -> None:
    # $100 eight days ago is outside today + 7 complete days; $2 a day since -> $2 a day.
    now = local(BERLIN, 2026, 5, 20)
    charges = days(date(2026, 5, 19), [100 * USD] + [2 * USD] * 7)
    assert forecast_spend(now, "month", BERLIN, charges).rate_nanos_per_day == 2 * USD


def test_short_history_is_not_diluted() -> None:
    # A workspace that started 3 days ago at $2 a day: 2026-05-17..19, now midnight of the 20th.
    # Days before the first charge are not history, so the rate is $2 (counting 4 empty days
    # as $0 would give 2 * (5 + 6 + 7) / 28 = $1.29).
    now = local(BERLIN, 2026, 5, 20)
    f = forecast_spend(now, "month", BERLIN, days(date(2026, 5, 19), [2 * USD] * 3))
    assert f.rate_nanos_per_day == 2 * USD
    assert f.history_days == 3
    # May has 31 days: $6 spent + 12 days * $2 = $30.
    assert f.projected_nanos == 30 * USD
    # A zero day inside the history does count (a quiet day is real history):
    # weights 7, 6, 5 on $0, $3, $3 -> (0 + 18 + 15) / 18 = $11/6.
    g = forecast_spend(now, "month", BERLIN, days(date(2026, 5, 19), [3 * USD, 3 * USD, 0]))
    assert g.rate_nanos_per_day == Fraction(11 * USD, 6)


def test_first_day_extrapolates_today() -> None:
    # Started today: $3 by noon (UTC) -> $6 a day; the rest of today adds $3, the week
    # (2026-05-20 is a Wednesday: Thu..Sun left) 4 days * $6 = $24 -> $30.
    now = utc(2026, 5, 20, 12)
    f = forecast_spend(now, "week", "UTC", {"2026-05-20": 3 * USD}, 24 * USD)
    assert f.rate_nanos_per_day == 6 * USD
    assert f.history_days == 0
    assert f.projected_nanos == 30 * USD
    # $24: $21 more -> $3 by midnight, then $18 = 3 days -> end of Saturday, Sunday 00:00.
    assert f.projected_exhaustion == utc(2026, 5, 24)


def test_exhaustion_spreads_over_a_25_hour_day() -> None:
    # New York, 2026-11-01 (25 hours), now its first instant: $24 a day for the week before;
    # a $12 daily budget runs out after half the day, 12.5 h: 04:00 UTC + 12.5 h = 16:30 UTC.
    now = local(NEW_YORK, 2026, 11, 1)
    charges = days(date(2026, 10, 31), [24 * USD] * 7)
    f = forecast_spend(now, "day", NEW_YORK, charges, 12 * USD)
    assert f.rate_nanos_per_day == 24 * USD
    assert f.projected_exhaustion == utc(2026, 11, 1, 16, 30)
    assert f.projected_nanos == 24 * USD


def test_zero_spend_and_no_budget() -> None:
    now = local(BERLIN, 2026, 4, 10, 12)
    zero = forecast_spend(now, "month", BERLIN, {}, 10 * USD)
    assert (zero.rate_nanos_per_day, zero.spent_nanos, zero.projected_nanos) == (0, 0, 0)
    assert zero.projected_exhaustion is None and not zero.will_exceed
    unbudgeted = forecast_spend(now, "month", BERLIN, days(date(2026, 4, 10), [USD] * 10))
    assert unbudgeted.projected_exhaustion is None and not unbudgeted.will_exceed
    assert unbudgeted.to_dict()["budget_usd"] is None
    assert unbudgeted.to_dict()["projected_percent"] is None
    # A $0 budget allows nothing: used up already (as percent_of says).
    nothing = forecast_spend(now, "month", BERLIN, {}, 0)
    assert nothing.projected_exhaustion == now and nothing.will_exceed


def test_already_over_budget_runs_out_now() -> None:
    now = local(BERLIN, 2026, 4, 10, 12)
    f = forecast_spend(now, "month", BERLIN, {}, 5 * USD, spent_nanos=6 * USD)
    assert f.spent_nanos == 6 * USD
    assert f.projected_exhaustion == now and f.will_exceed


def test_daily_charges_merge_priced_and_fallback() -> None:
    march = {"2026-03-31": Aggregate(cost_nanos=5, unpriced_nanos=2)}
    april = {"2026-04-01": Aggregate(cost_nanos=7), "2026-03-31": Aggregate(cost_nanos=1)}
    assert daily_charges(march, april) == {"2026-03-31": 8, "2026-04-01": 7}


# -- rolling limits ---------------------------------------------------------------------------

def test_limit_bounds() -> None:
    # 600 requests in the last minute = 10/s; rpd 100_000 with 40_000 in the window:
    # at the earliest 60_000 / 10 = 6000 s, at the latest 100_000 / 10 = 10_000 s.
    f = forecast_limit("rpd", 1000.0, 40_000, 100_000, 600)
    assert (f.earliest, f.latest) == (7000.0, 11_000.0)
    assert f.rate_per_hour == 36_000
    # 1/s: a whole day holds 86_400 < 100_000, so it need not run out (no latest); the
    # earliest (60_000 s) is within a day.
    slow = forecast_limit("rpd", 0.0, 40_000, 100_000, 60)
    assert (slow.earliest, slow.latest) == (60_000.0, None)
    idle = forecast_limit("tpd", 0.0, 40_000, 100_000, 0)
    assert (idle.earliest, idle.latest) == (None, None)
    out = forecast_limit("tpd", 5.0, 100_000, 100_000, 0)
    assert (out.earliest, out.latest) == (5.0, 5.0)
    with pytest.raises(ValueError, match="recent_seconds"):
        forecast_limit("rpd", 0.0, 0, 1, 1, recent_seconds=0)


# -- JSON -------------------------------------------------------------------------------------

def test_forecast_json() -> None:
    now = local(BERLIN, 2026, 4, 10, 12)
    month = forecast_spend(now, "month", BERLIN, days(date(2026, 4, 10), [USD] * 9 + [USD // 2]),
                           20 * USD)
    rpd = forecast_limit("rpd", now, 40_000, 100_000, 600)
    data = Forecast.of([month], [rpd]).to_dict()
    assert data["method"] == SPEND_METHOD == "trailing-7d-recency-weighted"
    assert data["limit_method"] == LIMIT_METHOD
    assert data["budgets"]["month"] == {
        "period": "month",
        "start": "2026-03-31T22:00:00Z",
        "end": "2026-04-30T22:00:00Z",
        "spent_usd": 9.5,
        "rate_usd_per_day": 1.0,
        "projected_usd": 30.0,
        "budget_usd": 20.0,
        "projected_percent": 150.0,
        "projected_exhaustion": "2026-04-20T22:00:00Z",
        "will_exceed": True,
        "history_days": 7,
    }
    assert data["limits"]["rpd"]["latest_exhaustion"] == "2026-04-10T12:46:40Z"
    assert Forecast().to_dict()["budgets"] == {}
