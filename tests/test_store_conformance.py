"""One conformance suite for every Store backend: memory, SQLite and Redis.

Every test takes the ``ops`` fixture (tests/conftest.py), which runs it once per backend
(like ``limits``' storage table) and mode: through the store's sync face (``Store``) and
through its async face (``AsyncStore``, ``as_async``), with the same assertions.
Backend-only behaviour (kill -9, several processes, Redis restart) lives in
tests/test_sqlite_store.py and tests/test_redis_store.py.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from store_helpers import T0, Ops, entry, one_request, rpm

from quota_hooks.storage import (
    Denial,
    Limits,
    MemoryStore,
    Reservation,
    SQLiteStore,
    Store,
    UsageDelta,
    UsageEntry,
    store_from_url,
    workspace_scope,
)
from quota_hooks.storage.base import ControlStore, as_async, budget_scope
from quota_hooks.usage import UsageRecord, bounded
from quota_hooks.windows import month_key

pytestmark = pytest.mark.unit

MONTH = month_key(T0)


def test_commit_then_read_everything(ops: Ops) -> None:
    ops.commit(entry(tokens=10, cost="0.001", extra_scopes=("team:ml",)))
    ops.commit(entry(tokens=5, cost="0.002", model="gpt-4o", success=False, status=500))
    ops.commit(entry(tokens=0, cost="0", status=429, success=False))
    c = ops.counters("workspace:ws", T0, MONTH)
    assert (c.requests_minute, c.tokens_minute, c.requests_day, c.tokens_day) == (3, 15, 3, 15)
    assert c.cost_month_nanos == 3_000_000
    assert (c.calls_minute, c.errors_minute, c.rate_limited_minute) == (3, 1, 1)
    team = ops.counters("team:ml", T0, MONTH)
    assert (team.requests_minute, team.cost_month_nanos) == (1, 1_000_000)
    models = ops.breakdown("workspace:ws", MONTH, "model")
    assert models["gpt-4o-mini"].requests == 2 and models["gpt-4o-mini"].errors == 1
    assert models["gpt-4o"].cost_nanos == 2_000_000 and models["gpt-4o"].tokens == 5
    assert ops.breakdown("workspace:ws", MONTH, "api_method")["chat.completions"].requests == 3
    ops.commit(entry(tokens=7, cost="0.004", now=T0 + 86_400))  # the next day
    days = ops.breakdown("workspace:ws", MONTH, "day")
    assert {d: (a.requests, a.tokens, a.cost_nanos) for d, a in days.items()} == {
        "2026-01-01": (3, 15, 3_000_000), "2026-01-02": (1, 7, 4_000_000)}
    recent = ops.recent("workspace:ws", 3)[1:]
    assert [r.status_code for r in recent] == [429, 500]  # newest first
    assert recent[1].model == "gpt-4o" and str(recent[1].cost) == "0.002"
    assert ops.workspaces() == ["ws"]
    assert ops.counters("workspace:nobody", T0, MONTH).requests_minute == 0


def test_unpriced_calls_and_their_fallback_charge(ops: Ops) -> None:
    """A call without a price: its fallback charge counts in the month (the budget), apart
    from the priced cost, and the calls are counted, in the month and per model."""
    priced = entry(cost="0.003")
    record = entry(model="my-llm").record
    unpriced = UsageEntry(record, ("workspace:ws",),
                          UsageDelta(requests=1, tokens=10, cost_nanos=5_000, calls=1,
                                     unpriced_nanos=5_000), T0, MONTH, None, "unpriced")
    ops.commit(priced)
    ops.commit(unpriced)
    ops.commit(unpriced)
    c = ops.counters("workspace:ws", T0, MONTH)
    assert c.cost_month_nanos == 3_000_000 + 10_000
    assert (c.unpriced_month_calls, c.unpriced_month_nanos) == (2, 10_000)
    models = ops.breakdown("workspace:ws", MONTH, "model")
    mine = models["my-llm"]
    assert (mine.requests, mine.cost_nanos, mine.unpriced, mine.unpriced_nanos) == (
        2, 0, 2, 10_000)
    assert (models["gpt-4o-mini"].cost_nanos, models["gpt-4o-mini"].unpriced) == (3_000_000, 0)
    [day] = ops.breakdown("workspace:ws", MONTH, "day").values()
    assert (day.cost_nanos, day.unpriced_nanos) == (3_000_000, 10_000)
    assert ops.recent("workspace:ws", 1)[0].cost is None  # unknown, not $0


def test_minute_and_day_window_boundaries(ops: Ops) -> None:
    ops.commit(entry(now=T0 + 10.7))  # bucket 10: counts until T0 + 70.0
    assert ops.counters("workspace:ws", T0 + 69.999, MONTH).requests_minute == 1
    assert ops.counters("workspace:ws", T0 + 70.0, MONTH).requests_minute == 0
    # the day window: 1-minute buckets, so the call counts until T0 + 24 h (bucket 0)
    assert ops.counters("workspace:ws", T0 + 86_399.9, MONTH).requests_day == 1
    assert ops.counters("workspace:ws", T0 + 86_400.0, MONTH).requests_day == 0
    # the month total stays for the month
    assert ops.counters("workspace:ws", T0 + 86_400.0, MONTH).cost_month_nanos == 1_000_000


def test_reservations_hold_limits_and_expire(ops: Ops) -> None:
    limits = {"workspace:ws": Limits(rpm=2, tpm=100)}
    first = ops.reserve(["workspace:ws"], one_request(60), limits, T0, MONTH, ttl=10)
    assert isinstance(first, Reservation)
    denied = ops.reserve(["workspace:ws"], one_request(60), limits, T0, MONTH, ttl=10)
    assert isinstance(denied, Denial)
    assert (denied.scope, denied.limit, denied.used, denied.maximum) == (
        "workspace:ws", "tpm", 60, 100)
    assert denied.retry_after == 60.0  # the held bucket leaves the window at T0 + 60
    # Never settled: past its ttl it is forgotten, but what it held stays counted (a call
    # nobody recorded used its estimate), and leaves the windows as usage does.
    still = ops.reserve(["workspace:ws"], one_request(60), limits, T0 + 10, MONTH, ttl=10)
    assert isinstance(still, Denial) and still.used == 60
    assert ops.counters("workspace:ws", T0 + 10, MONTH).tokens_minute == 60
    assert not ops.release(first, T0 + 10)  # forgotten: nothing to give back
    again = ops.reserve(["workspace:ws"], one_request(60), limits, T0 + 60, MONTH, ttl=10)
    assert isinstance(again, Reservation)
    assert ops.counters("workspace:ws", T0 + 60, MONTH).tokens_minute == 60


def test_budget_denial(ops: Ops) -> None:
    limits = {"workspace:ws": Limits(budget_nanos=1_500_000)}
    ops.commit(entry(cost="0.001"))
    delta = UsageDelta(requests=1, cost_nanos=400_000)
    assert isinstance(ops.reserve(["workspace:ws"], delta, limits, T0, MONTH, 30), Reservation)
    denied = ops.reserve(["workspace:ws"], delta, limits, T0, MONTH, 30)
    assert isinstance(denied, Denial) and denied.limit == "monthly_budget_usd"
    assert (denied.used, denied.maximum) == (1_400_000, 1_500_000)


def test_settle_exactly_once(ops: Ops) -> None:
    held = ops.reserve(["workspace:ws"], one_request(500), rpm(10), T0, MONTH, 30)
    assert isinstance(held, Reservation)
    assert ops.counters("workspace:ws", T0, MONTH).tokens_minute == 500
    ops.commit(entry(tokens=42), held)
    ops.commit(entry(tokens=42), held)  # a second settle of the same reservation
    c = ops.counters("workspace:ws", T0, MONTH)
    assert (c.requests_minute, c.tokens_minute) == (2, 84)  # two records, one estimate undone
    assert not ops.release(held, T0)  # already settled
    other = ops.reserve(["workspace:ws"], one_request(7), rpm(10), T0, MONTH, 30)
    assert isinstance(other, Reservation)
    assert ops.release(other, T0) and not ops.release(other, T0)
    assert ops.counters("workspace:ws", T0, MONTH).tokens_minute == 84


def test_claims(ops: Ops) -> None:
    assert ops.claim("alert:ws:rpm:warning", T0, 60)
    assert not ops.claim("alert:ws:rpm:warning", T0 + 59, 60)
    assert ops.claim("alert:ws:rpm:critical", T0, 60)
    assert ops.claim("alert:ws:rpm:warning", T0 + 60, 60)


@pytest.mark.parametrize("tenant", [
    "ws'; DROP TABLE buckets; --",
    "ws*?[]%_{a}:b",
    "a\x00b",
    "ünïcødé 🚀",
    "x" * 1_000_000,
])
def test_tenant_ids_are_opaque(ops: Ops, tenant: str) -> None:
    ops.commit(entry(ws=tenant))
    ops.commit(entry(ws="ws"))
    scope, kept = workspace_scope(tenant), bounded(tenant)  # a 1 MB id: its start and a hash
    assert len(kept) <= 200 and (kept == tenant) is (len(tenant) <= 200)
    assert ops.counters(scope, T0, MONTH).requests_minute == 1
    assert ops.counters("workspace:ws", T0, MONTH).requests_minute == 1
    assert ops.counters("workspace:ws*", T0, MONTH).requests_minute == 0
    assert sorted(ops.workspaces()) == sorted([kept, "ws"])
    [record] = ops.recent(scope, 5)
    assert record.workspace_id == kept
    held = ops.reserve([scope], one_request(), rpm(1, scope), T0, MONTH, 30)
    assert isinstance(held, Denial)  # its own limit, its own count


@pytest.mark.slow
def test_10000_concurrent_reservations_admit_exactly_the_limit_threads(ops: Ops) -> None:
    granted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = 0
        for _ in range(10_000 // 8):
            result = ops.reserve(["workspace:ws"], one_request(), rpm(1000), T0, MONTH, 300)
            mine += isinstance(result, Reservation)
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 1000
    assert ops.counters("workspace:ws", T0, MONTH).requests_minute == 1000


@pytest.mark.slow
async def test_10000_concurrent_reservations_admit_exactly_the_limit_tasks(store: Store) -> None:
    astore = as_async(store)

    async def one() -> bool:
        result = await astore.areserve(["workspace:ws"], one_request(), rpm(1000), T0, MONTH, 300)
        return isinstance(result, Reservation)

    results: list[bool] = []
    for _ in range(10):  # 10 waves of 1,000 concurrent tasks
        results += await asyncio.gather(*(one() for _ in range(1000)))
    assert sum(results) == 1000


def test_store_from_url(tmp_path: Path) -> None:
    assert isinstance(store_from_url("memory://"), MemoryStore)
    sqlite = store_from_url(f"sqlite:///{tmp_path}/a.db?durability=sync")
    assert isinstance(sqlite, SQLiteStore) and sqlite.durability == "sync"
    assert sqlite.path == tmp_path / "a.db"
    sqlite.close()
    for bad, message in [
        ("postgres://x", "unknown scheme 'postgres'"),
        ("sqlite://host/a.db", "sqlite:///relative.db"),
        ("sqlite:///a.db?durability=maybe", "durability must be batched or sync, got 'maybe'"),
        ("sqlite:///a.db?mode=x", "unknown option"),
    ]:
        with pytest.raises(Exception, match=message):
            store_from_url(bad)


def test_a_release_after_the_ttl_gives_nothing_back(ops: Ops) -> None:
    """Past its ttl a reservation is forgotten and what it held stays counted, whether a
    settle or a release comes late, and whether or not another call reaped it first: the same
    on every backend."""
    held = ops.reserve(["workspace:ws"], one_request(50), rpm(10), T0, MONTH, 5)
    assert isinstance(held, Reservation)
    assert ops.release(held, T0 + 100) is False
    counters = ops.counters("workspace:ws", T0 + 100, MONTH)
    assert (counters.requests_day, counters.tokens_day) == (1, 50)
    on_time = ops.reserve(["workspace:ws"], one_request(7), rpm(10), T0 + 100, MONTH, 5)
    assert isinstance(on_time, Reservation)
    assert ops.release(on_time, T0 + 104) is True
    assert ops.counters("workspace:ws", T0 + 104, MONTH).tokens_day == 50


def test_a_clock_that_steps_back_never_makes_a_window_negative(ops: Ops) -> None:
    """Two reservations pending when the clock steps back 505 s; one settles then, the other
    a day later: the day window counts what belongs to it, never less than zero."""
    limits = {"workspace:ws": Limits(tpd=10**6)}
    t1 = T0 + 3_734_515.43
    month = month_key(t1)
    first = ops.reserve(["workspace:ws"], UsageDelta(requests=1, tokens=81), limits, t1,
                        month, 10**7)
    second = ops.reserve(["workspace:ws"], UsageDelta(requests=1, tokens=80), limits,
                         t1 + 1.5, month, 10**7)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    t2 = t1 - 505.3  # the clock stepped back
    ops.commit(entry(now=t2, tokens=19), second)
    t3 = t2 + 86_407  # a day later
    late = entry(now=t3, tokens=36)
    ops.commit(UsageEntry(late.record, late.scopes, late.delta, t3, month_key(t3), late.cost,
                          late.price_source, at=t3 - 100), first)
    counters = ops.counters("workspace:ws", t3, month_key(t3))
    assert (counters.requests_day, counters.tokens_day) == (1, 36)


# ---------------------------------------------------------------------- the control plane
def test_the_policy_table_is_versioned_and_read_only_when_it_changed(ops: Ops) -> None:
    assert isinstance(ops.store, ControlStore)
    empty = ops.policies()
    assert empty is not None and (empty.version, dict(empty.policies)) == (0, {})
    assert ops.policies(0) is None  # still version 0: nothing to read
    assert ops.put_policies({"*": '{"rpm": 5}', "team:ml": '{"tpm": 9}'}, T0) == 1
    table = ops.policies(0)
    assert table is not None and table.version == 1
    assert {k: (p.document, p.version, p.updated_at) for k, p in table.policies.items()} == {
        "*": ('{"rpm": 5}', 1, T0), "team:ml": ('{"tpm": 9}', 1, T0)}
    assert ops.policies(1) is None
    assert ops.put_policies({"workspace:a": '{"rpm": 1}', "*": None}, T0 + 5) == 2
    table = ops.policies(1)
    assert table is not None and table.version == 2
    assert {k: p.version for k, p in table.policies.items()} == {"team:ml": 1, "workspace:a": 2}
    assert table.policies["workspace:a"].updated_at == T0 + 5


def test_policies_seed_a_store_only_once(ops: Ops) -> None:
    """``only_if_new`` writes only in a store that never held a policy: code seeds a store
    once, and a store whose policies were all deleted is not seeded again."""
    assert ops.put_policies({"*": '{"rpm": 1}'}, T0, only_if_new=True) == 1
    assert ops.put_policies({"*": '{"rpm": 2}'}, T0, only_if_new=True) is None
    assert ops.put_policies({"*": None}, T0) == 2
    assert ops.put_policies({"*": '{"rpm": 3}'}, T0, only_if_new=True) is None
    table = ops.policies()
    assert table is not None and (table.version, dict(table.policies)) == (2, {})


def test_concurrent_policy_writes_each_get_their_own_version(ops: Ops) -> None:
    versions: list[int | None] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        version = ops.put_policies({f"workspace:w{i}": f'{{"rpm": {i}}}'}, T0)
        with lock:
            versions.append(version)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v for v in versions if v is not None) == list(range(1, 21))
    table = ops.policies()
    assert table is not None and table.version == 20 and len(table.policies) == 20


def test_the_alert_history_keeps_the_last_n_newest_first(ops: Ops) -> None:
    for i in range(7):
        ops.append_alert("workspace:a", f'{{"n": {i}}}', T0 + i, 5)
    ops.append_alert("workspace:b", '{"n": 99}', T0, 5)
    assert ops.alert_history("workspace:a", 3) == ['{"n": 6}', '{"n": 5}', '{"n": 4}']
    assert ops.alert_history("workspace:a", 100) == [f'{{"n": {i}}}' for i in range(6, 1, -1)]
    assert ops.alert_history("workspace:b", 10) == ['{"n": 99}']
    assert ops.alert_history("workspace:nobody", 10) == []
    assert ops.alert_history("workspace:a", 0) == []


def test_breakdowns_keep_the_token_mix(ops: Ops) -> None:
    """Cached and cache-write input and reasoning output, per model, method and day (what
    cheaper-model advice reprices)."""
    record = UsageRecord(workspace_id="ws", model="o3", input_tokens=1_000,
                         cached_input_tokens=600, cache_write_tokens=100, output_tokens=500,
                         reasoning_tokens=300)
    mixed = UsageEntry(record, ("workspace:ws",), UsageDelta(requests=1, tokens=1_500,
                                                             cost_nanos=7, calls=1),
                       T0, MONTH, Decimal("0.000000007"), "test")
    ops.commit(mixed)
    ops.commit(mixed)
    for by, name in (("model", "o3"), ("api_method", "chat.completions"), ("day", "2026-01-01")):
        row = ops.breakdown("workspace:ws", MONTH, by)[name]
        assert (row.input_tokens, row.cached_input_tokens, row.cache_write_tokens,
                row.output_tokens, row.reasoning_tokens) == (2_000, 1_200, 200, 1_000, 600)


def test_a_budget_reset_keeps_the_live_holds_and_the_breakdowns(ops: Ops) -> None:
    for _ in range(3):
        ops.commit(entry(cost="0.001"))
    budget = {"workspace:ws": Limits(budget_nanos=10**9)}
    held = ops.reserve(["workspace:ws"], UsageDelta(requests=1, cost_nanos=500_000), budget,
                       T0, MONTH, 60)
    lost = ops.reserve(["workspace:ws"], UsageDelta(requests=1, cost_nanos=200_000), budget,
                       T0, MONTH, 5)  # never recorded: past its ttl, it counts as used
    assert isinstance(held, Reservation) and isinstance(lost, Reservation)
    assert ops.counters("workspace:ws", T0 + 10, MONTH).cost_month_nanos == 3_700_000
    assert ops.reset_budget("workspace:ws", MONTH, T0 + 10) == 3_200_000
    c = ops.counters("workspace:ws", T0 + 10, MONTH)
    assert (c.cost_month_nanos, c.budget_reset_at) == (500_000, T0 + 10)  # the live hold
    ops.commit(entry(cost="0.002", now=T0 + 20), held)  # settles: the hold becomes the charge
    assert ops.counters("workspace:ws", T0 + 20, MONTH).cost_month_nanos == 2_000_000
    assert ops.reset_budget("workspace:ws", MONTH, T0 + 30) == 2_000_000
    assert ops.reset_budget("workspace:ws", MONTH, T0 + 30) == 0
    assert ops.counters("workspace:ws", T0 + 30, MONTH).cost_month_nanos == 0
    assert ops.breakdown("workspace:ws", MONTH, "model")["gpt-4o-mini"].cost_nanos == 5_000_000
    assert ops.reset_budget("workspace:nobody", MONTH, T0) is None


def test_a_week_budget_scope_keeps_one_total_across_a_month_boundary(ops: Ops) -> None:
    # ISO week 2026-W01 runs from Monday 2025-12-29 to Sunday 2026-01-04: its scope keeps one
    # total whichever month a call falls in, while the workspace keeps one a month.
    ws, week = "workspace:ws", budget_scope("workspace:ws", "2026-W01")
    limits = {week: Limits(budget_nanos=3_000_000)}
    call = UsageDelta(requests=1, cost_nanos=1_000_000)

    def spend(now: float) -> None:
        month = month_key(now)
        held = ops.reserve([ws, week], call, limits, now, month, 60)
        assert isinstance(held, Reservation), held
        base = entry(now=now, cost="0.001")
        ops.commit(replace(base, scopes=(ws, week)), held)

    spend(T0 - 3600)  # 2025-12-31T23:00Z
    spend(T0)  # 2026-01-01T00:00Z
    late = ops.reserve([ws, week], call, limits, T0 + 1, MONTH, 60)  # held, not recorded yet
    assert isinstance(late, Reservation)
    refused = ops.reserve([ws, week], call, limits, T0 + 2, MONTH, 60)
    assert isinstance(refused, Denial)
    assert (refused.scope, refused.used, refused.maximum) == (week, 3_000_000, 3_000_000)
    for month in ("2025-12", MONTH):  # asked under either month: the week's own total
        assert ops.counters(week, T0 + 2, month).cost_month_nanos == 3_000_000
    assert ops.counters(ws, T0 + 2, "2025-12").cost_month_nanos == 1_000_000
    assert ops.counters(ws, T0 + 2, MONTH).cost_month_nanos == 2_000_000  # with the hold
    assert ops.breakdown(week, MONTH, "day") == {}  # a budget keeps its cost, no breakdowns
    # A reset of the week keeps its live hold and leaves the months alone.
    assert ops.reset_budget(week, MONTH, T0 + 3) == 2_000_000
    assert ops.counters(week, T0 + 3, MONTH).cost_month_nanos == 1_000_000
    assert ops.counters(ws, T0 + 3, MONTH).cost_month_nanos == 2_000_000
    assert isinstance(ops.reserve([ws, week], call, limits, T0 + 4, MONTH, 60), Reservation)
    # A caller's own scope of kind "budget" is an ordinary scope, kept per month.
    ops.commit(entry(cost="0.001", extra_scopes=("budget:q1",)))
    assert ops.counters("budget:q1", T0, MONTH).cost_month_nanos == 1_000_000


def test_a_policy_write_from_a_stale_read_is_refused(ops: Ops) -> None:
    assert ops.put_policies({"*": '{"rpm": 1}'}, T0, expect_version=0) == 1
    assert ops.put_policies({"*": '{"rpm": 2}'}, T0, expect_version=0) is None  # stale
    assert ops.put_policies({"*": '{"rpm": 3}'}, T0, expect_version=1) == 2
    table = ops.policies()
    assert table is not None and table.policies["*"].document == '{"rpm": 3}'
