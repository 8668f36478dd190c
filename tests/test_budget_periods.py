"""Day, week and month budgets at once, at their boundaries, in a zone that is not UTC, on
every backend; their status, alerts, resets, the CLI's ``--period`` and their atomicity."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from quota_hooks import QuotaExceededError, QuotaManager, QuotaPolicy, RateLimitedError
from quota_hooks.alerts import Alert, AlertKind
from quota_hooks.cli import main
from quota_hooks.storage import MemoryStore, SQLiteStore, Store
from quota_hooks.storage.base import budget_scope
from quota_hooks.testing import ManualClock
from quota_hooks.usage import Estimate, UsageRecord

KOLKATA = ZoneInfo("Asia/Kolkata")  # UTC+05:30: its midnight is 18:30 UTC the day before
#: gpt-4o, 1,000 input and 100 output tokens: $0.0025 + $0.001 = $0.0035 a call, estimated
#: and recorded alike.
ESTIMATE = Estimate(model="gpt-4o", api_method="chat.completions", input_tokens=1_000,
                    output_tokens=100)
CALL = Decimal("0.0035")


def local(*args: int) -> float:
    return datetime(*args, tzinfo=KOLKATA).timestamp()  # type: ignore[misc]


def budgets(**fields: object) -> QuotaPolicy:
    return QuotaPolicy(rpm=None, rpd=None, tpm=None, tpd=None, timezone="Asia/Kolkata",
                       **fields)  # type: ignore[arg-type]


def call(manager: QuotaManager, workspace: str = "acme") -> str | None:
    """One call, reserved and recorded: None when it was admitted, else the refusing
    limit."""
    try:
        held = manager.acquire(workspace, ESTIMATE)
    except QuotaExceededError as exc:
        return exc.limit
    manager.record(UsageRecord(model="gpt-4o", provider="openai", workspace_id=workspace,
                               input_tokens=1_000, output_tokens=100), reservation=held)
    return None


def test_day_week_and_month_budgets_turn_at_local_midnights(store: Store) -> None:
    # ISO week 2026-W49 runs from Monday 30 November to Sunday 6 December, across a month.
    clock = ManualClock(local(2026, 11, 30, 23, 50))
    m = QuotaManager(store=store, policy=budgets(
        daily_budget_usd=Decimal("0.01"), weekly_budget_usd=Decimal("0.02"),
        monthly_budget_usd=Decimal("0.014")), clock=clock)

    assert [call(m) for _ in range(3)] == [None, None, "daily_budget_usd"]
    clock.advance(local(2026, 12, 1, 0, 0) - clock())  # 18:30 UTC: still the 30th in UTC
    assert [call(m), call(m), call(m)] == [None, None, "daily_budget_usd"]
    report = m.status("acme")
    assert report.daily_budget_usd is not None and report.weekly_budget_usd is not None
    assert (report.daily_budget_usd.current, report.weekly_budget_usd.current,
            report.monthly_budget_usd.current) == (0.007, 0.014, 0.007)  # December's share
    assert report.weekly_budget_usd.percentage == 70.0

    clock.advance(local(2026, 12, 2, 0, 0) - clock())
    assert [call(m), call(m)] == [None, "weekly_budget_usd"]  # 0.0175, then 0.021 > 0.02
    assert m.status("acme").monthly_budget_usd.current == 0.0105
    clock.advance(local(2026, 12, 6, 23, 59) - clock())
    assert call(m) == "weekly_budget_usd"  # Sunday: the same week
    clock.advance(local(2026, 12, 7, 0, 0) - clock())
    # Monday: a new week; then December's 0.0175 > 0.014
    assert [call(m), call(m)] == [None, "monthly_budget_usd"]
    m.close()


def test_the_refusal_names_the_budget_and_the_status_shows_only_those_set() -> None:
    clock = ManualClock(local(2026, 3, 5, 12, 0))
    m = QuotaManager(policy=budgets(daily_budget_usd=Decimal("0.005")), clock=clock)
    assert call(m) is None
    with pytest.raises(QuotaExceededError) as caught:
        m.acquire("acme", ESTIMATE)
    assert (caught.value.scope, caught.value.limit) == ("workspace:acme", "daily_budget_usd")
    assert str(caught.value) == (
        "workspace:acme: the daily budget of $0.005 has no room for this call ($0.0035 spent "
        "or held today); the call was not sent")
    data = m.status("acme").to_dict(enhanced=False)
    assert data["daily_budget_usd"] == {"current": 0.0035, "limit": 0.005, "percentage": 70.0}
    assert "weekly_budget_usd" not in data and data["monthly_budget_usd"]["limit"] == 100
    assert data["status"] == "normal"  # 70 % of the day: below the warning's 80
    plain = QuotaManager(clock=clock).status("acme").to_dict(enhanced=False)
    assert "daily_budget_usd" not in plain and "weekly_budget_usd" not in plain
    m.close()


def test_a_spent_day_budget_is_quota_exceeded_and_forecast() -> None:
    clock = ManualClock(local(2026, 3, 5, 12, 0))
    m = QuotaManager(policy=budgets(daily_budget_usd=CALL * 2), clock=clock)
    assert [call(m), call(m)] == [None, None]
    report = m.status("acme")
    assert report.status.value == "quota_exceeded" and report.limits["daily_budget_usd"]
    assert report.forecast is not None
    day = report.forecast["budgets"]["day"]
    assert (day["period"], day["spent_usd"], day["budget_usd"]) == ("day", 0.007, 0.007)
    assert set(report.forecast["budgets"]) == {"month", "day"}
    m.close()


def test_day_budget_alerts_fire_once_a_day_and_again_after_a_reset(tmp_path: Path) -> None:
    clock = ManualClock(local(2026, 3, 5, 9, 0))
    m = QuotaManager(store=SQLiteStore(tmp_path / "q.db"), clock=clock, policy=budgets(
        daily_budget_usd=CALL * 4, thresholds=[50, 100], monthly_budget_usd=None))
    seen: list[Alert] = []
    m.add_sink(seen.append)

    def day_alerts() -> list[tuple[str, float | None]]:
        assert m.drain()
        return [(a.kind.value, a.threshold) for a in seen if a.metric == "daily_budget_usd"
                and a.kind is not AlertKind.PROJECTED]

    assert [call(m), call(m)] == [None, None]  # 50 %
    assert day_alerts() == [("threshold", 50.0)]
    assert [call(m), call(m), call(m)] == [None, None, "daily_budget_usd"]
    assert day_alerts() == [("threshold", 50.0), ("quota_exceeded", 100.0)]
    assert m.reset_usage("acme", period="day", by="test") == CALL * 4
    assert "The 2026-03-05 budget of workspace:acme was reset by test" in m.alert_history(
        "acme")[0].message
    assert m.status("acme").daily_budget_usd.current == 0  # type: ignore[union-attr]
    assert [call(m), call(m)] == [None, None]  # the day's budget starts again: it re-fires
    assert day_alerts()[-1] == ("threshold", 50.0)
    seen.clear()
    clock.advance(local(2026, 3, 6, 0, 0) - clock())
    assert [call(m), call(m)] == [None, None]  # a new day: the 50 % alert is sent again
    assert day_alerts() == [("threshold", 50.0)]
    # Yesterday spent the whole budget: today's rate runs out before midnight, said once.
    assert [a.dedupe_key for a in seen if a.kind is AlertKind.PROJECTED] == [
        "alert:acme:daily_budget_usd:projected:2026-03-06"]
    assert all("daily budget" in a.message for a in seen if a.kind is not AlertKind.USAGE_RESET)
    with pytest.raises(Exception, match="no week budget"):
        m.reset_usage("acme", period="week")
    m.close()


def test_policy_set_budget_with_a_period(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert main(["policy", "set", "acme", "--budget", "10", "--period", "day",
                 "--store", url]) == 0
    assert main(["policy", "set", "acme", "--budget", "200", "--store", url]) == 0
    assert main(["policy", "set", "acme", "--budget", "60", "--period", "week",
                 "--timezone", "Asia/Kolkata", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "budget $10.00/day, budget $60.00/week, budget $200.00/month" in out
    assert main(["policy", "get", "acme", "--json", "--store", url]) == 0
    stored = json.loads(capsys.readouterr().out)["policy"]
    assert (stored["daily_budget_usd"], stored["weekly_budget_usd"],
            stored["monthly_budget_usd"], stored["timezone"]) == ("10", "60", "200",
                                                                  "Asia/Kolkata")
    assert main(["policy", "set", "acme", "--period", "day", "--store", url]) == 2
    assert "--period day sets the period of --budget" in capsys.readouterr().err
    m = QuotaManager(store=SQLiteStore(tmp_path / "p.db"))
    assert m.policy_for("acme").daily_budget_usd == 10
    m.close()


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_day_budget_holds_under_concurrent_callers(backend: str, tmp_path: Path) -> None:
    # 8 threads race 25 calls each at a budget with room for 17: exactly 17 get through.
    store: Store = MemoryStore() if backend == "memory" else SQLiteStore(tmp_path / "q.db")
    m = QuotaManager(store=store, clock=ManualClock(local(2026, 3, 5, 12, 0)),
                     policy=budgets(daily_budget_usd=CALL * 17, monthly_budget_usd=None))
    outcomes: list[str | None] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            outcome = call(m)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(None) == 17
    assert set(outcomes) == {None, "daily_budget_usd"}
    assert m.status("acme").daily_budget_usd.current == float(CALL * 17)  # type: ignore[union-attr]
    m.close()


def test_a_call_reserved_before_midnight_is_charged_to_the_day_that_held_it(
        store: Store) -> None:
    clock = ManualClock(local(2026, 11, 30, 23, 59, 50))
    m = QuotaManager(store=store, clock=clock, policy=budgets(
        daily_budget_usd=Decimal("0.01"), monthly_budget_usd=Decimal("0.02")))
    late = [m.acquire("acme", ESTIMATE) for _ in range(2)]  # $0.007 held on the 30th
    clock.advance(15)  # 00:00:05 on 1 December: a new day and a new month
    assert [call(m), call(m), call(m)] == [None, None, "daily_budget_usd"]
    clock.advance(25)
    for held in late:  # the two calls of the 30th end now
        m.record(UsageRecord(model="gpt-4o", provider="openai", workspace_id="acme",
                             input_tokens=1_000, output_tokens=100), reservation=held)
    report = m.status("acme")
    assert report.daily_budget_usd.current == 0.007  # type: ignore[union-attr]
    assert report.monthly_budget_usd.current == 0.007  # never more than the day admitted
    yesterday = m.store.counters(budget_scope("workspace:acme", "2026-11-30"), clock(), "")
    assert yesterday.cost_month_nanos == 7_000_000  # settled there, not held twice
    november = m.store.counters("workspace:acme", clock(), "2026-11")
    assert november.cost_month_nanos == 7_000_000
    m.close()


def test_no_callers_scope_is_charged_as_a_workspace_or_a_budget_period() -> None:
    clock = ManualClock(local(2026, 12, 2, 12, 0))
    m = QuotaManager(clock=clock, policy=budgets(daily_budget_usd=Decimal("0.005")),
                     policies={"mallory": QuotaPolicy.unlimited()},
                     scope_policies={"budget:*": QuotaPolicy(rpm=1)})
    for scopes in ({"budget": "2026-12-02@workspace:victim"}, {"workspace": "victim"},
                   {"_budget": "2026-12-02@workspace:victim"}):
        m.record(UsageRecord(model="gpt-4o", provider="openai", workspace_id="mallory",
                             input_tokens=1_000, output_tokens=100, scopes=scopes))
    assert m.status("victim").daily_budget_usd.current == 0  # type: ignore[union-attr]
    assert m.status("victim").requests_per_day.current == 0
    assert call(m, "victim") is None  # the victim's day is untouched
    # A caller's scope of kind "budget" is limited by its own policy, as any other.
    one = Estimate(model="gpt-4o", api_method="chat.completions", input_tokens=1)
    m.acquire("mallory", one, scopes={"budget": "2026-12-02@nowhere"})
    with pytest.raises(RateLimitedError) as caught:  # a KeyError once
        m.acquire("mallory", one, scopes={"budget": "2026-12-02@nowhere"})
    assert caught.value.scope == "_budget:2026-12-02@nowhere"
    m.close()
