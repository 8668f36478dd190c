"""The control plane: policies in the store (shared, versioned, seeded by code), the CLI and
REST admin API over them, thresholds as a list, and the alert history in the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from store_helpers import redis_url

from quota_hooks import (
    ConfigurationError,
    QuotaManager,
    QuotaPolicy,
    RateLimitedError,
    UsageRecord,
)
from quota_hooks.alerts import Alert, AlertKind
from quota_hooks.cli import main
from quota_hooks.server import create_app
from quota_hooks.storage import MemoryStore, SQLiteStore, store_from_url
from quota_hooks.testing import ManualClock
from quota_hooks.usage import Estimate

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ROOT = Path(__file__).resolve().parent.parent


def one() -> Estimate:
    return Estimate(model="gpt-4o-mini", input_tokens=1, output_tokens=1)


def admitted(manager: QuotaManager, ws: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            reservation = manager.acquire(ws, one(), wait=False)
        except RateLimitedError:
            continue
        ok += 1
        manager.record(UsageRecord(workspace_id=ws, model="gpt-4o-mini", input_tokens=1,
                                   output_tokens=1), reservation)
    return ok


# ---------------------------------------------------------------------- precedence
@pytest.mark.unit
def test_code_seeds_a_new_store_once_and_the_store_wins_after() -> None:
    store = MemoryStore()
    first = QuotaManager(QuotaPolicy(rpm=3, mode="raise"), store=store, clock=ManualClock(T0))
    table = store.policies()
    assert table is not None and set(table.policies) == {"*"}
    assert QuotaPolicy.model_validate_json(table.policies["*"].document).rpm == 3
    # A second process with other limits in code enforces the store's: one policy for all.
    second = QuotaManager(QuotaPolicy(rpm=100, mode="raise"), store=store,
                          clock=ManualClock(T0))
    assert second.policy_for("ws").rpm == 3
    assert admitted(second, "ws", 5) == 3
    # And a bare manager enforces what is stored, too.
    bare = QuotaManager(store=store, clock=ManualClock(T0))
    assert bare.policy_for("other").rpm == 3
    assert bare.policy_source("other") == {"source": "store", "key": "*", "version": 1}
    first.close(), second.close(), bare.close()


@pytest.mark.unit
def test_a_lookup_takes_the_most_specific_policy_and_the_store_at_equal_specificity() -> None:
    store = MemoryStore()
    store.put_policies({key: QuotaPolicy(rpm=rpm).model_dump_json() for key, rpm in [
        ("*", 1), ("workspace:stored", 2), ("team:*", 3), ("user:u-1", 4)]}, T0)
    # Code policies of a process joining a store that has its own (they seed no more).
    m = QuotaManager(store=store, policies={"coded": QuotaPolicy(rpm=7)},
                     scope_policies={"team:ml": QuotaPolicy(rpm=8), "user:*": QuotaPolicy(rpm=9)})
    assert m.policy_for("stored").rpm == 2  # the store's own
    assert m.policy_for("coded").rpm == 7  # the code's own beats the store's default
    assert m.policy_for("any").rpm == 1  # the store's default beats the code's
    assert m.policy_source("coded") == {"source": "code", "key": "workspace:coded"}
    policies = m.policies
    assert policies.for_scope("team", "ml").rpm == 8  # type: ignore[union-attr]
    assert policies.for_scope("team", "ops").rpm == 3  # type: ignore[union-attr]
    assert policies.for_scope("user", "u-1").rpm == 4  # type: ignore[union-attr]
    assert policies.for_scope("user", "u-2").rpm == 9  # type: ignore[union-attr]
    m.put_policies({"workspace:coded": QuotaPolicy(rpm=70)})
    assert m.policy_for("coded").rpm == 70  # the store's own beats the code's own
    m.close()


@pytest.mark.unit
def test_a_stored_user_star_policy_limits_each_user() -> None:
    store = MemoryStore()
    m = QuotaManager(QuotaPolicy.unlimited(), store=store, clock=ManualClock(T0))
    m.put_policies({"user:*": QuotaPolicy(rpm=2, mode="raise")})
    results = []
    for user in ("u-1", "u-1", "u-1", "u-2"):
        try:
            m.acquire("ws", one(), scopes={"user": user}, wait=False)
            results.append(user)
        except RateLimitedError as exc:
            assert exc.scope == "user:u-1" and exc.limit == "rpm"
    assert results == ["u-1", "u-1", "u-2"]
    m.close()


@pytest.mark.unit
def test_set_policy_reaches_every_manager_of_the_store() -> None:
    store = MemoryStore()
    a = QuotaManager(store=store, clock=ManualClock(T0))
    b = QuotaManager(store=store, clock=ManualClock(T0))
    a.set_policy("acme", QuotaPolicy(rpm=5))
    b.refresh_policies()
    assert b.policy_for("acme").rpm == 5
    a.set_policy("acme", None)
    b.refresh_policies()
    assert b.policy_for("acme").rpm == 500
    a.close(), b.close()


@pytest.mark.unit
def test_a_stored_policy_from_a_newer_version_stays_readable(
        caplog: pytest.LogCaptureFixture) -> None:
    """A field this version cannot read is left out of its policy (and logged); the fields
    it can read are kept: one field never costs the whole policy."""
    store = MemoryStore()
    store.put_policies({"workspace:new": json.dumps({"rpm": 4, "a_future_field": 1}),
                        "workspace:odd": json.dumps({"rpm": 5, "mode": "queue"}),
                        "workspace:bad": "not json"}, T0)
    m = QuotaManager(QuotaPolicy(rpm=9), store=store)
    assert m.policy_for("new").rpm == 4
    assert m.policy_for("odd").rpm == 5 and m.policy_for("odd").mode is None
    assert "workspace:odd (fields left out: mode)" in caplog.text
    assert m.policy_for("bad").rpm == 9  # not a policy at all: the next one down applies
    m.close()


@pytest.mark.unit
def test_a_store_that_cannot_be_read_keeps_the_policies_and_calls_never_wait_on_it() -> None:
    class Failing(MemoryStore):
        reads = 0

        def policies(self, known: int = -1):  # type: ignore[no-untyped-def]
            Failing.reads += 1
            raise OSError("down")

    store = Failing()
    m = QuotaManager(QuotaPolicy(rpm=3, mode="raise"), store=store, clock=ManualClock(T0))
    assert m.policy_for("ws").rpm == 3 and Failing.reads == 1
    for _ in range(3):  # the calls read nothing more before policy_refresh is up
        m.acquire("ws", one(), wait=False)
    assert Failing.reads == 1 and m.tracking_errors == 0
    m.close()


# ---------------------------------------------------------------------- across processes
WORKER = textwrap.dedent("""
    import json, sys, time
    from quota_hooks import QuotaManager, RateLimitedError, UsageRecord
    from quota_hooks.usage import Estimate
    from quota_hooks.storage import store_from_url

    url, workspace = sys.argv[1], sys.argv[2]
    m = QuotaManager(store=store_from_url(url))
    before = m.policy_for(workspace).rpm
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while m.policy_for(workspace).rpm == before and time.monotonic() < deadline:
        time.sleep(0.005)
    seen = time.time()
    ok = refused = 0
    for _ in range(4):
        try:
            r = m.acquire(workspace, Estimate(model="gpt-4o-mini", input_tokens=1,
                                              output_tokens=1), wait=False)
            m.record(UsageRecord(workspace_id=workspace, model="gpt-4o-mini", input_tokens=1,
                                 output_tokens=1), r)
            ok += 1
        except RateLimitedError:
            refused += 1
    print(json.dumps({"seen": seen, "ok": ok, "refused": refused}), flush=True)
    m.close()
""")


def _store_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url = redis_url()
    if url is None:
        pytest.skip("no Redis server (CI starts one)")
    return url + ("&" if "?" in url else "?") + f"prefix=qh-cp-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_policy_set_from_the_cli_is_enforced_by_two_processes_within_a_second(
        kind: str, tmp_path: Path) -> None:
    url = _store_url(kind, tmp_path)
    QuotaManager(QuotaPolicy(rpm=1000), store=store_from_url(url)).close()  # the app's seed
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, url, ws], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for ws in ("w1", "w2")]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        cli = subprocess.run(
            [sys.executable, "-m", "quota_hooks.cli", "policy", "set", "*", "--rpm", "2",
             "--mode", "raise", "--store", url], env=env, capture_output=True, text=True,
            timeout=60)
        done = time.time()
        assert cli.returncode == 0, cli.stderr
        assert "*: version 2: rpm 2" in cli.stdout
        results = [json.loads(w.communicate(timeout=60)[0].splitlines()[-1]) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for result in results:
        assert result["seen"] - done < 1.0, result  # seen within a second of the change
        assert (result["ok"], result["refused"]) == (2, 2)  # and enforced: rpm 2


# ---------------------------------------------------------------------- the CLI
@pytest.mark.unit
def test_policy_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    assert main(["policy", "set", "acme", "--rpm", "10", "--budget", "5.5", "--store", url]) == 0
    assert capsys.readouterr().out.startswith("workspace:acme: version 1: rpm 10, rpd 10000")
    assert main(["policy", "set", "acme", "--tpm", "none", "--set", "max_wait=2",
                 "--store", url]) == 0
    capsys.readouterr()
    assert main(["policy", "get", "acme", "--json", "--store", url]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["version"], got["policy"]["rpm"], got["policy"]["tpm"],
            got["policy"]["max_wait"], got["policy"]["monthly_budget_usd"]) == (
        2, 10, None, 2.0, "5.5")  # the second set kept what the first one set
    assert main(["policy", "set", "team:ml", "--rpd", "50", "--store", url]) == 0
    assert main(["policy", "list", "--json", "--store", url]) == 0
    listed = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert listed["version"] == 3
    assert [p["key"] for p in listed["policies"]] == ["team:ml", "workspace:acme"]
    assert main(["policy", "get", "beta", "--store", url]) == 0
    assert "no stored policy" in capsys.readouterr().out
    assert main(["policy", "delete", "acme", "--store", url]) == 0
    assert "deleted (version 4)" in capsys.readouterr().out
    # What the app does with it: the stored policies, and the history of every change.
    m = QuotaManager(store=SQLiteStore(tmp_path / "p.db"))
    assert m.policies.for_scope("team", "ml").rpd == 50  # type: ignore[union-attr]
    history = m.alert_history("acme")
    assert [a.kind for a in history] == [AlertKind.POLICY_CHANGED] * 3
    assert "deleted by" in history[0].message and "quota-hooks policy delete" in history[0].message
    m.close()


@pytest.mark.unit
@pytest.mark.parametrize(("argv", "says"), [
    (["policy", "set", "acme", "--rpm", "-1"], "--rpm: must be finite and >= 0, got '-1'"),
    (["policy", "set", "acme", "--rpm", "ten"], "--rpm: must be a whole number or 'none'"),
    (["policy", "set", "acme", "--warning", "99", "--critical", "90"],
     "warning_percent (99) must not exceed critical_percent (90)"),
    (["policy", "set", "acme", "--timezone", "Mars/Base"], "unknown IANA time zone"),
    (["policy", "set", "acme", "--thresholds", "50,120"], "--thresholds=(50.0, 120.0)"),
    (["policy", "set", "acme", "--set", "nope=1"], "unknown policy field(s) ['nope']"),
    (["policy", "set", "acme"], "give at least one limit to set"),
    (["policy", "delete", "nobody"], "workspace:nobody has no stored policy"),
    (["policy", "set", " ", "--rpm", "1"], "a policy needs a workspace, scope or '*'"),
])
def test_policy_commands_name_a_bad_value_and_exit_2(
        argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    main(["policy", "set", "*", "--rpm", "5", "--store", url])
    capsys.readouterr()
    try:
        code = main([*argv, "--store", url])
    except SystemExit as exc:  # argparse's own refusal of a flag's value
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    assert says in capsys.readouterr().err


# ---------------------------------------------------------------------- REST
ADMIN, ACME = "admin-token-1234", "acme-token-1234"


@pytest.mark.unit
def test_rest_admin_policies(tmp_path: Path) -> None:
    m = QuotaManager(store=SQLiteStore(tmp_path / "r.db"))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(create_app(m, tokens=f"*:{ADMIN},acme:{ACME}")) as client:
        assert client.get("/api/quota/policies", headers=admin).json() == {
            "version": 0, "policies": []}
        put = client.put("/api/quota/policies/acme", headers=admin,
                         json={"rpm": 7, "monthly_budget_usd": "12.50"})
        assert put.status_code == 200, put.text
        assert put.json()["version"] == 1 and put.json()["key"] == "workspace:acme"
        assert m.policy_for("acme").rpm == 7
        assert m.policy_for("acme").monthly_budget_usd == Decimal("12.50")
        got = client.get("/api/quota/policies/acme", headers=admin).json()
        assert got["policy"]["rpm"] == 7 and got["version"] == 1
        # A workspace token may not touch policies; bad bodies are named.
        acme = {"Authorization": f"Bearer {ACME}"}
        assert client.put("/api/quota/policies/acme", headers=acme,
                          json={"rpm": 1}).status_code == 403
        assert client.get("/api/quota/policies", headers=acme).status_code == 403
        bad = client.put("/api/quota/policies/acme", headers=admin, json={"rpm": -5})
        assert bad.status_code == 422 and "rpm=-5" in bad.text
        unknown = client.put("/api/quota/policies/acme", headers=admin, json={"rpn": 5})
        assert unknown.status_code == 422 and "unknown policy field(s) ['rpn']" in unknown.text
        assert client.get("/api/quota/policies/nobody", headers=admin).status_code == 404
        # The status says where the policy comes from; the history shows the change.
        status = client.get("/api/quota/status/acme", headers=acme).json()
        assert status["policy"] == {"source": "store", "key": "workspace:acme", "version": 1}
        alerts = client.get("/api/quota/alerts/acme", headers=acme).json()["alerts"]
        assert [a["kind"] for a in alerts] == ["policy_changed"]
        assert "by the REST API" in alerts[0]["message"]
        assert client.delete("/api/quota/policies/acme", headers=admin).json()["version"] == 2
        assert client.delete("/api/quota/policies/acme", headers=admin).status_code == 404
        assert m.policy_for("acme").rpm == 500
        assert client.get("/api/quota/alerts/beta", headers=acme).status_code == 403
    m.close()


# ---------------------------------------------------------------------- thresholds
@pytest.mark.unit
def test_four_thresholds_crossed_in_one_jump_give_four_alerts_in_order_once() -> None:
    got: list[Alert] = []
    clock = ManualClock(T0)
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal("1"), thresholds=(50, 80, 95, 100),
                                 mode="observe"),
                     store=MemoryStore(), clock=clock, sinks=[got.append])
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", cost=Decimal("1.2")))
    assert m.drain(10)
    budget = [a for a in got if a.metric == "monthly_budget_usd"]
    assert [(a.kind, a.threshold) for a in budget] == [
        (AlertKind.THRESHOLD, 50.0), (AlertKind.WARNING, 80.0), (AlertKind.CRITICAL, 95.0),
        (AlertKind.QUOTA_EXCEEDED, 100.0)]
    assert len({a.dedupe_key for a in budget}) == 4
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", cost=Decimal("0.1")))
    assert m.drain(10)
    assert len([a for a in got if a.metric == "monthly_budget_usd"]) == 4  # once
    # Kept in the history too, newest first.
    kept = [a for a in m.alert_history("ws") if a.metric == "monthly_budget_usd"]
    assert [a.threshold for a in kept] == [100.0, 95.0, 80.0, 50.0]
    m.close()


@pytest.mark.unit
def test_thresholds_are_validated() -> None:
    assert QuotaPolicy(thresholds=[95, 50, 50, 80]).thresholds == (50, 80, 95)
    with pytest.raises(ValueError, match="at most 100"):
        QuotaPolicy(thresholds=[50, 101])
    with pytest.raises(ValueError, match="give 1 to 10 thresholds"):
        QuotaPolicy(thresholds=[])
    with pytest.raises(ConfigurationError, match="thresholds"):
        from quota_hooks.policy import parse_policy

        parse_policy('{"thresholds": ["x"]}', strict=True)


# ---------------------------------------------------------------------- the alert history
def test_the_alert_history_survives_a_restart_and_is_shared(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    clock = ManualClock(T0)
    writer = QuotaManager(QuotaPolicy(rpd=10, mode="observe"), store=SQLiteStore(path),
                          clock=clock)  # no sink: the history is kept anyway
    for _ in range(10):
        writer.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini"))
    assert writer.drain(10)
    writer.close()
    reader = QuotaManager(store=SQLiteStore(path), clock=clock)  # another process, later
    kinds = [(a.kind, a.metric) for a in reader.alert_history("ws")]
    assert kinds == [(AlertKind.CRITICAL, "rpd"), (AlertKind.WARNING, "rpd")]
    assert reader.alert_history("ws", 1)[0].current == 10.0
    reader.close()


# ---------------------------------------------------------------------- forecasts
def _spend_daily(m: QuotaManager, clock: ManualClock, days: int, usd: str) -> None:
    """``usd`` charged at noon (local) of each of ``days`` days, the clock ending on the
    next day's 00:00 local."""
    for _ in range(days):
        clock.advance(12 * 3600)
        m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", cost=Decimal(usd)))
        clock.advance(12 * 3600)


@pytest.mark.unit
def test_the_status_forecasts_the_month_from_a_known_run_rate() -> None:
    """$1 a day on each of the 10 first days of April in Berlin: on the 11th at 00:00 local
    the rate is $1 a day and the projection $30, the $20 budget running out at the end of
    April 20 (local midnight: 2026-04-20T22:00Z)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    start = datetime(2026, 4, 1, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    clock = ManualClock(start)
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(20), timezone="Europe/Berlin",
                                 mode="observe"), clock=clock, alert_history=0)
    _spend_daily(m, clock, 10, "1")
    report = m.status("ws").to_dict()
    month = report["forecast"]["budgets"]["month"]
    assert report["forecast"]["method"] == "trailing-7d-recency-weighted"
    assert (month["spent_usd"], month["rate_usd_per_day"], month["projected_usd"]) == (
        10.0, 1.0, 30.0)
    assert month["projected_exhaustion"] == "2026-04-20T22:00:00Z" and month["will_exceed"]
    assert "forecast" not in m.status("ws", enhanced=False).to_dict()
    m.close()


@pytest.mark.unit
def test_a_projected_alert_is_sent_once_per_month() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    got: list[Alert] = []
    start = datetime(2026, 4, 1, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    clock = ManualClock(start)
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(20), timezone="Europe/Berlin",
                                 mode="observe"), clock=clock, sinks=[got.append])
    _spend_daily(m, clock, 10, "1")
    assert m.drain(10)
    _spend_daily(m, clock, 2, "1")  # still projected, later: not sent again
    assert m.drain(10)
    projected = [a for a in got if a.kind == AlertKind.PROJECTED]
    assert len(projected) == 1
    assert projected[0].dedupe_key == "alert:ws:monthly_budget_usd:projected:2026-04"
    assert "projected to spend $30.00 of its $20.00 monthly budget" in projected[0].message
    assert "runs out at 2026-04-20 22:00 UTC" in projected[0].message
    m.close()


@pytest.mark.unit
def test_a_week_budget_is_projected_once_per_iso_week() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    got: list[Alert] = []
    clock = ManualClock(datetime(2026, 3, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())
    m = QuotaManager(QuotaPolicy(weekly_budget_usd=Decimal(5), monthly_budget_usd=None,
                                 timezone="Europe/Berlin", mode="observe"),
                     clock=clock, sinks=[got.append])
    _spend_daily(m, clock, 2, "1")  # Wednesday 00:00: $2 at $1 a day -> $7 of $5
    assert m.drain(10)
    _spend_daily(m, clock, 5, "1")  # to Monday: the week's budget is spent (no projection)
    assert m.drain(10)
    _spend_daily(m, clock, 2, "1")  # the next week: projected again
    assert m.drain(10)
    projected = [a for a in got if a.kind == AlertKind.PROJECTED]
    assert [a.dedupe_key for a in projected] == [
        "alert:ws:weekly_budget_usd:projected:2026-W14",
        "alert:ws:weekly_budget_usd:projected:2026-W15"]
    assert "projected to spend $7.00 of its $5.00 weekly budget" in projected[0].message
    m.close()


@pytest.mark.unit
def test_a_budget_on_track_sends_no_projected_alert() -> None:
    got: list[Alert] = []
    clock = ManualClock(T0)
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(100), mode="observe"),
                     clock=clock, sinks=[got.append])
    _spend_daily(m, clock, 10, "1")  # $31 projected of $100
    assert m.drain(10)
    assert [a for a in got if a.kind == AlertKind.PROJECTED] == []
    m.close()


# ---------------------------------------------------------------------- usage reset
def _budget_call(m: QuotaManager) -> bool:
    from quota_hooks import QuotaExceededError

    try:
        r = m.acquire("acme", Estimate(model="gpt-4o-mini", input_tokens=1, output_tokens=1))
    except QuotaExceededError:
        return False
    m.record(UsageRecord(workspace_id="acme", model="gpt-4o-mini", cost=Decimal("0.4")), r)
    return True


@pytest.mark.unit
def test_a_reset_reopens_the_budget_and_is_kept_in_the_history(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(1)), store=store_from_url(url))
    assert [_budget_call(m) for _ in range(4)] == [True, True, True, False]  # $1.20 > $1
    assert main(["reset", "acme", "--store", url]) == 0  # another process, an admin
    assert "$1.20 charged this month no longer counts" in capsys.readouterr().out
    assert m.status("acme").monthly_budget_usd.current == 0
    assert [_budget_call(m) for _ in range(4)] == [True, True, True, False]
    # The breakdowns keep everything; the history says who reset it and how much.
    status = m.status("acme").to_dict()
    assert status["enhanced_tracking"]["models_breakdown"]["gpt-4o-mini"]["cost_usd"] == 2.4
    [reset] = [a for a in m.alert_history("acme") if a.kind == AlertKind.USAGE_RESET]
    assert "quota-hooks reset" in reset.message and "$1.20" in reset.message
    m.close()
    assert main(["reset", "*", "--store", url]) == 2
    assert "one workspace or scope at a time" in capsys.readouterr().err


@pytest.mark.unit
def test_rest_reset_needs_an_admin_token() -> None:
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(1)), store=MemoryStore())
    m.record(UsageRecord(workspace_id="acme", model="gpt-4o-mini", cost=Decimal("0.25")))
    with TestClient(create_app(m, tokens=f"*:{ADMIN},acme:{ACME}")) as client:
        assert client.post("/api/quota/reset/acme",
                           headers={"Authorization": f"Bearer {ACME}"}).status_code == 403
        done = client.post("/api/quota/reset/acme", headers={"Authorization": f"Bearer {ADMIN}"})
        assert done.json() == {"key": "workspace:acme", "period": "month", "reset_usd": "0.25"}
        assert client.post("/api/quota/reset/*", headers={
            "Authorization": f"Bearer {ADMIN}"}).status_code == 422
    assert m.status("acme").monthly_budget_usd.current == 0
    m.close()


# ---------------------------------------------------------------------- from a review
@pytest.mark.unit
def test_a_table_whose_version_went_back_is_a_new_table() -> None:
    """A store that lost its data (a Redis flushed or failed over, a file restored from a
    backup) starts its versions again: a running process uses the new table."""
    store = MemoryStore()
    m = QuotaManager(store=store, clock=ManualClock(T0))
    for rpm in (400, 401, 402, 403):
        m.put_policies({"*": QuotaPolicy(rpm=rpm)})
    assert m.policy_for("ws").rpm == 403 and m.policies.version == 4
    lost = MemoryStore()  # what the store holds after losing everything
    lost.put_policies({"*": QuotaPolicy(rpm=1).model_dump_json()}, T0)
    store._policies = lost._policies  # the same store, its data lost
    m.refresh_policies()
    assert m.policy_for("ws").rpm == 1 and m.policies.version == 1
    m.close()


@pytest.mark.unit
def test_read_only_commands_never_seed_a_store_from_the_shell(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    SQLiteStore(tmp_path / "fresh.db").close()
    monkeypatch.setenv("OPENAI_RATE_LIMIT_PER_MINUTE", "100000")
    for argv in (["policy", "list"], ["policy", "get", "acme"], ["alerts", "acme"]):
        assert main([*argv, "--store", url]) == 0
    store = SQLiteStore(tmp_path / "fresh.db")
    table = store.policies()
    assert table is not None and table.version == 0  # nothing written
    store.close()
    app = QuotaManager(QuotaPolicy(rpm=5), store=store_from_url(url))
    assert app.policy_for("acme").rpm == 5  # the app's own policy seeds it
    app.close()


@pytest.mark.unit
def test_a_change_to_a_scope_without_its_own_policy_starts_from_its_kind_or_no_limit() -> None:
    m = QuotaManager(store=MemoryStore())
    m.put_policies({"user:*": QuotaPolicy(rpm=5, rpd=20, monthly_budget_usd=Decimal(1))})
    _, user = m.update_policy("user:u-7", {"rpm": 3})
    assert (user.rpm, user.rpd, user.monthly_budget_usd) == (3, 20, Decimal(1))
    _, team = m.update_policy("team:ml", {"tpd": 1000})
    assert (team.tpd, team.rpm, team.monthly_budget_usd) == (1000, None, None)
    m.close()


@pytest.mark.unit
def test_set_policy_keeps_no_code_copy_that_outlives_a_delete() -> None:
    store = MemoryStore()
    a = QuotaManager(store=store)
    a.set_policy("acme", QuotaPolicy(rpm=1000))
    a.put_policies({"workspace:acme": None, "*": QuotaPolicy(rpm=2)})
    assert a.policy_for("acme").rpm == 2
    assert a.policy_source("acme") == {"source": "store", "key": "*", "version": 2}
    a.close()


@pytest.mark.unit
def test_a_concurrent_change_is_read_again_never_overwritten() -> None:
    class Racing(MemoryStore):
        raced = False

        def put_policies(self, changes, now, *, only_if_new=False,  # type: ignore[no-untyped-def]
                         expect_version=None):
            if expect_version is not None and not Racing.raced:
                Racing.raced = True  # another admin's change lands between read and write
                other = QuotaPolicy(monthly_budget_usd=Decimal(1)).model_dump_json()
                super().put_policies({"workspace:acme": other}, now)
            return super().put_policies(changes, now, only_if_new=only_if_new,
                                        expect_version=expect_version)

    m = QuotaManager(store=Racing())
    version, policy = m.update_policy("acme", {"rpm": 50})
    assert (policy.rpm, policy.monthly_budget_usd, version) == (50, Decimal(1), 2)
    m.close()


@pytest.mark.unit
def test_limits_beyond_what_stores_count_are_refused_with_their_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quota_hooks.policy import parse_policy, policy_key

    with pytest.raises(ValueError, match="monthly_budget_usd"):
        QuotaPolicy(monthly_budget_usd=Decimal("1e22"))
    with pytest.raises(ValueError, match="rpm"):
        QuotaPolicy(rpm=10**16)
    with pytest.raises(ConfigurationError, match="rpm=True"):
        parse_policy('{"rpm": true}', strict=True)
    assert main(["policy", "set", "acme", "--budget", "1e22",
                 "--store", f"sqlite:///{tmp_path / 'b.db'}"]) == 2
    assert "--budget=Decimal('1E+22')" in capsys.readouterr().err
    with pytest.raises(ConfigurationError, match="neither part empty"):
        policy_key("workspace:")
    assert policy_key("workspace:*") == "*" and policy_key("a:b:c") == "a:b:c"


@pytest.mark.unit
def test_a_stored_policy_this_version_cannot_read_in_full_can_still_be_changed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    store = SQLiteStore(tmp_path / "n.db")
    store.put_policies({"workspace:acme": json.dumps({"rpm": 5, "mode": "queue"})}, T0)
    store.close()
    assert main(["policy", "list", "--json", "--store", url]) == 0
    [entry] = json.loads(capsys.readouterr().out)["policies"]
    assert entry["policy"]["rpm"] == 5 and entry["unreadable"] == ["mode"]
    assert main(["policy", "set", "acme", "--rpd", "9", "--store", url]) == 0
    assert "rpm 5, rpd 9" in capsys.readouterr().out
    store = SQLiteStore(tmp_path / "n.db")
    store.put_policies({"team:ml": "not json"}, T0)
    store.close()
    assert main(["policy", "list", "--store", url]) == 0
    assert "team:ml" in (listed := capsys.readouterr().out) and "not readable: " in listed


@pytest.mark.unit
def test_scope_changes_are_kept_apart_from_a_workspace_of_that_name() -> None:
    m = QuotaManager(store=MemoryStore())
    m.put_policies({"team:ml": QuotaPolicy(rpm=1), "*": QuotaPolicy(rpm=2)})
    assert m.alert_history("team:ml") == [] and m.alert_history("*") == []
    assert [a.kind for a in m.history_of("team:ml")] == [AlertKind.POLICY_CHANGED]
    assert [a.kind for a in m.history_of("*")] == [AlertKind.POLICY_CHANGED]
    m.close()


@pytest.mark.unit
def test_new_thresholds_while_armed_still_fire() -> None:
    got: list[Alert] = []
    store = MemoryStore()
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(1), mode="observe",
                                 thresholds=(10, 20, 30, 40, 50)),
                     store=store, clock=ManualClock(T0), sinks=[got.append])
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", cost=Decimal("0.55")))
    assert m.drain(10)
    m.put_policies({"*": QuotaPolicy(monthly_budget_usd=Decimal(1), mode="observe",
                                     thresholds=(60, 100))})
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", cost=Decimal("0.55")))
    assert m.drain(10)
    budget = [(a.kind, a.threshold) for a in got if a.metric == "monthly_budget_usd"]
    assert budget[-2:] == [(AlertKind.THRESHOLD, 60.0), (AlertKind.QUOTA_EXCEEDED, 100.0)]
    m.close()


def test_a_first_read_that_failed_is_tried_again_at_once_not_after_a_back_off(
        tmp_path: Path) -> None:
    class Flaky(SQLiteStore):
        failures = 3

        def policies(self, known: int = -1):  # type: ignore[no-untyped-def]
            if Flaky.failures:
                Flaky.failures -= 1
                raise OSError("not yet")
            return super().policies(known)

    seed = SQLiteStore(tmp_path / "f.db")
    seed.put_policies({"*": QuotaPolicy(rpm=2).model_dump_json()}, T0)
    seed.close()
    m = QuotaManager(QuotaPolicy(rpm=1000), store=Flaky(tmp_path / "f.db"))
    assert m.policy_for("ws").rpm == 1000  # the first read failed: the code's, for now
    deadline = time.monotonic() + 5
    while m.policy_for("ws").rpm != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.policy_for("ws").rpm == 2 and time.monotonic() < deadline - 3  # within ~2 s
    m.close()


@pytest.mark.unit
def test_a_reprice_after_a_reset_moves_only_the_breakdowns_of_earlier_calls(
        tmp_path: Path) -> None:
    from quota_hooks.pricing import PriceBook

    clock = ManualClock(T0)
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(1)),
                     store=SQLiteStore(tmp_path / "p.db"), clock=clock)
    for _ in range(4):
        m.record(UsageRecord(workspace_id="acme", model="gpt-4o", input_tokens=100_000))
    clock.advance(60)
    m.reset_usage("acme")
    assert m.status("acme").monthly_budget_usd.current == 0
    clock.advance(60)
    cheap = PriceBook.bundled().with_overrides({"gpt-4o": {"input": "0.01", "output": "0.01"}})
    m.prices = m.core.prices = cheap
    m.reprice(T0 - 1)
    assert m.status("acme").monthly_budget_usd.current == 0  # no credit handed back
    models = m.status("acme").enhanced_tracking.models_breakdown  # type: ignore[union-attr]
    assert models["gpt-4o"].cost_usd == pytest.approx(4 * 0.001)
    m.close()


@pytest.mark.unit
def test_a_team_reset_reaches_the_month_its_workspaces_count_in() -> None:
    """A Tokyo workspace's team is charged in Tokyo's month: on Nov 30 at 20:00 UTC that is
    already December, and a reset of the team reaches it."""
    from datetime import datetime

    from quota_hooks import QuotaExceededError

    clock = ManualClock(datetime(2026, 11, 30, 20, tzinfo=UTC).timestamp())
    m = QuotaManager(QuotaPolicy(timezone="Asia/Tokyo", monthly_budget_usd=None),
                     scope_policies={"team:ml": QuotaPolicy(monthly_budget_usd=Decimal(1))},
                     store=MemoryStore(), clock=clock)

    def team_call() -> bool:
        try:
            r = m.acquire("ws", Estimate(model="gpt-4o-mini", input_tokens=1, output_tokens=1),
                          scopes={"team": "ml"})
        except QuotaExceededError:
            return False
        m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", cost=Decimal("0.5"),
                             scopes={"team": "ml"}), r)
        return True

    assert [team_call() for _ in range(3)] == [True, True, False]
    assert m.reset_usage("team:ml") == Decimal(1)
    assert [team_call() for _ in range(3)] == [True, True, False]
    with pytest.raises(ConfigurationError, match="team:typo has no usage"):
        m.reset_usage("team:typo")
    m.close()


@pytest.mark.unit
def test_budget_alerts_fire_again_after_a_reset() -> None:
    got: list[Alert] = []
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal(1), mode="observe"),
                     store=MemoryStore(), clock=ManualClock(T0), sinks=[got.append])
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", cost=Decimal("1.5")))
    assert m.drain(10)
    m.reset_usage("ws")
    m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", cost=Decimal("1.5")))
    assert m.drain(10)
    exceeded = [a for a in got if a.kind == AlertKind.QUOTA_EXCEEDED]
    assert len(exceeded) == 2 and exceeded[0].dedupe_key != exceeded[1].dedupe_key
    m.close()


@pytest.mark.unit
def test_a_store_that_lost_its_data_and_numbered_from_1_again_is_read_anew(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After an outage the whole table is read: a Redis that came back empty and got a new
    version 1 is not taken for the old version 1 (a process went on admitting rpm=100)."""
    import quota_hooks.control as control

    class Outage(MemoryStore):
        down = False

        def policies(self, known: int = -1):  # type: ignore[no-untyped-def]
            if self.down:
                raise OSError("restarting")
            return super().policies(known)

    store = Outage()
    m = QuotaManager(QuotaPolicy(rpm=100), store=store, clock=ManualClock(T0))
    assert (m.policy_for("ws").rpm, m.policies.version) == (100, 1)
    store.down = True
    m.refresh_policies()  # fails: the policies in use stay
    fresh = MemoryStore()  # it came back empty; an admin wrote version 1 again
    fresh.put_policies({"*": QuotaPolicy(rpm=1).model_dump_json()}, T0)
    store._policies, store.down = fresh._policies, False
    m.refresh_policies()
    assert (m.policy_for("ws").rpm, m.policies.version) == (1, 1)
    # Without an outage seen, the whole table is read every FULL_READ seconds.
    again = MemoryStore()
    again.put_policies({"*": QuotaPolicy(rpm=7).model_dump_json()}, T0)
    store._policies = again._policies
    m.refresh_policies()
    assert m.policy_for("ws").rpm == 1  # the version alone says nothing changed
    later = time.monotonic() + control.FULL_READ + 1
    monkeypatch.setattr(control.time, "monotonic", lambda: later)
    m.refresh_policies()
    assert m.policy_for("ws").rpm == 7
    monkeypatch.undo()  # the clock again, before anything waits on it
    m.close()
