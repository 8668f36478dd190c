"""The core suites: record() throughput, status() flatness, memory, pricing, tenants."""

from __future__ import annotations

import gc
import logging
import os
import statistics
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from quota_hooks import Estimate, QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.storage import MemoryStore, SQLiteStore, Store

from ._harness import Goal, ab, note, rates, report, spread_of
from ._profile import cause, memory_cause


# ---------------------------------------------------------------------- core
def record_throughput(store: Store, n: int, blocks: int, goal: Goal, name: str,
                      threaded: bool = False) -> None:
    """record() rate in blocks of n // blocks records, each block ending with a flush (a
    batched store's writer has committed it): median and spread over blocks. A miss is
    profiled over blocks of 2,000 records (with the writer thread's batches, when
    ``threaded``)."""
    manager = QuotaManager(QuotaPolicy.unlimited(), store=store)
    records = [UsageRecord(workspace_id=f"ws{i % 10}", model="gpt-4o-mini", input_tokens=100,
                           output_tokens=20) for i in range(1000)]
    flush = getattr(store, "flush", None)

    def block(size: int = n // blocks) -> int:
        for i in range(size):
            manager.record(records[i % 1000])
        if flush is not None:
            flush()
        return size

    block()  # warm up: prices cached, tables created
    (rate, spread), (cpu_rate, cpu_spread) = rates(block, blocks)
    hooks = [(manager, "record"), (store, "_write_items")] if threaded else []

    def profiled() -> None:
        block(2_000)

    report(name, rate, "rec/s", goal, spread,
           cause=lambda: cause(profiled, calls=5, per=2_000, hooks=hooks, unit="record"))
    report(f"{name}, per CPU second", cpu_rate, "rec/s", spread=cpu_spread)


def acquire_over_record(quick: bool) -> None:
    """What enforcing adds to a call on the memory store: acquire() + record() against
    record() alone, on one manager whose limits (rpm, tpm, budget) all raise."""
    manager = QuotaManager(QuotaPolicy(rpm=10**9, rpd=None, tpm=10**12, tpd=None,
                                       monthly_budget_usd=Decimal(10**9), mode="raise"))
    estimate = Estimate(model="gpt-4o-mini", input_tokens=100, output_tokens=20)
    record = UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=100,
                         output_tokens=20)

    def alone() -> None:
        manager.record(record)

    def enforced() -> None:
        manager.record(record, manager.acquire("ws", estimate))

    ratio, spread = ab(alone, enforced, 1000 if quick else 5000, 5 if quick else 15)
    report("core: acquire+record / record (memory)", ratio, "x", Goal.of("<=", 1.6), spread,
           cause=lambda: "acquire+record: " + cause(enforced, calls=5_000))


def redis_reserve_settle(url: str, n: int) -> float | None:
    try:
        from quota_hooks.storage.redis import RedisStore

        store = RedisStore.from_url(url, prefix=f"qh-bench-{uuid.uuid4().hex[:6]}")
        store.client.ping()
    except Exception:
        return None
    manager = QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=10**12, tpd=None,
                                       monthly_budget_usd=None, mode="raise"), store=store)
    estimate = Estimate(model="gpt-4o-mini", input_tokens=100, output_tokens=20)
    record = UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=100,
                         output_tokens=20)
    start = time.perf_counter()
    for _ in range(n):
        manager.record(record, manager.acquire("ws", estimate))
    rate = n / (time.perf_counter() - start)
    store.clear()
    return rate


def status_latencies(stores: list[tuple[Store, int]]) -> list[float]:
    """Median status() latency (us) of each store after filling it with its history. The
    stores are read in alternating rounds, so that drift in the process (GC generations, a
    noisy neighbour) lands on all of them alike."""
    managers = []
    record = UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=10)
    for store, history in stores:
        manager = QuotaManager(QuotaPolicy(), store=store)
        for _ in range(history):
            manager.record(record)
        manager.status("ws")
        managers.append(manager)
    blocks: list[list[float]] = [[] for _ in managers]
    for _ in range(9):
        for i, manager in enumerate(managers):
            start = time.perf_counter()
            for _ in range(30):
                manager.status("ws")
            blocks[i].append((time.perf_counter() - start) / 30 * 1e6)
    return [statistics.median(b) for b in blocks]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def core(quick: bool) -> None:
    n = 20_000 if quick else 200_000
    record_throughput(MemoryStore(), n, 5 if quick else 10, Goal.of(">=", 200_000),
                      "core: record() memory")
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "b.db")
        record_throughput(store, n // 2, 5 if quick else 10, Goal.of(">=", 60_000),
                          "core: record() SQLite (batched, incl. flush)", threaded=True)
        store.close()
    acquire_over_record(quick)
    url = os.environ.get("QUOTA_HOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    redis_rate = redis_reserve_settle(url, 2_000 if quick else 10_000)
    if redis_rate is None:
        where = urlsplit(url)
        note(f"Redis reserve+settle not measured: no Redis server at {where.hostname}:"
             f"{where.port or 6379} (set QUOTA_HOOKS_TEST_REDIS_URL)")
    else:
        report("core: Redis reserve+settle (loopback)", redis_rate, "ops/s",
               Goal.of(">=", 10_000))
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    latencies = status_latencies([(MemoryStore(), size) for size in sizes])
    for size, micros in zip(sizes, latencies, strict=True):
        report(f"core: status() memory, {size:,} records of history", micros, "us")
    flat = max(latencies) / min(latencies)
    report("core: status() largest / smallest history", flat, "x", Goal.of("<=", 1.5))
    with tempfile.TemporaryDirectory() as tmp:
        small_store, big_store = SQLiteStore(Path(tmp) / "s.db"), SQLiteStore(Path(tmp) / "b.db")
        big_history = 30_000 if quick else 100_000
        small, big = status_latencies([(small_store, 10_000), (big_store, big_history)])
        small_store.close()
        big_store.close()
    report(f"core: status() SQLite {big_history // 1000}k / 10k history", big / small, "x",
           Goal.of("<=", 1.5))
    # RSS over 1M records on the memory store
    gc.collect()
    before = rss_mb()
    manager = QuotaManager(QuotaPolicy.unlimited())
    records = [UsageRecord(workspace_id=f"ws{i % 100}", model="gpt-4o-mini", input_tokens=5)
               for i in range(1000)]
    count = 100_000 if quick else 1_000_000
    for i in range(count):
        manager.record(records[i % 1000])
    gc.collect()
    growth = rss_mb() - before

    def more(n: int) -> None:
        for i in range(n):
            manager.record(records[i % 1000])

    report(f"core: RSS growth over {count:,} records (memory)", growth, "MB",
           Goal.of("<=", 50), cause=lambda: memory_cause(more, 100_000, "record"))
    # enforcement on vs observe-only
    estimate = Estimate(model="gpt-4o-mini", input_tokens=100, output_tokens=20)
    record = UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=100,
                         output_tokens=20)
    observe = QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=None, tpd=None,
                                       monthly_budget_usd=None, mode="observe"))
    enforce = QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=10**12, tpd=None,
                                       monthly_budget_usd=Decimal(10**9), mode="raise"))
    ratio, spread = ab(lambda: observe.record(record, observe.acquire("ws", estimate)),
                       lambda: enforce.record(record, enforce.acquire("ws", estimate)),
                       1000 if quick else 5000, 5 if quick else 9)
    report("core: acquire+record, enforcing / observe-only", ratio, "x", spread=spread)


# ---------------------------------------------------------------------- pricing
def pricing(quick: bool) -> None:
    """What pricing adds to record(): record() of records that still need a price against
    the same records priced already (cost given), alternating rounds, in microseconds."""
    from quota_hooks import PriceBook

    cases = [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-20250514"),
             ("google", "gemini-2.5-pro"), ("groq", "llama-3.3-70b-versatile")]
    unpriced = [UsageRecord(workspace_id="ws", provider=p, model=m, input_tokens=1_200,
                            cached_input_tokens=1_024, output_tokens=300) for p, m in cases]
    manager = QuotaManager(QuotaPolicy.unlimited())
    priced = [r.with_cost(manager.prices.cost(r).usd, "preset") for r in unpriced]
    n = 2_000 if quick else 5_000
    state = {"i": 0}

    def with_cost() -> None:
        state["i"] += 1
        manager.record(priced[state["i"] % 4])

    def needs_cost() -> None:
        state["i"] += 1
        manager.record(unpriced[state["i"] % 4])

    times = []
    for r in range(7 if quick else 41):
        pair = []
        for fn in ((with_cost, needs_cost) if r % 2 == 0 else (needs_cost, with_cost)):
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            pair.append((fn, time.perf_counter() - start))
        by = dict(pair)
        times.append((by[needs_cost] - by[with_cost]) / n * 1e6)
    added = statistics.median(times)
    report("pricing: added to record() after warm-up", added, "us", Goal.of("<=", 3),
           spread_of(times), cause=lambda: "PriceBook.cost() of the same records: "
           + cause(lambda: manager.prices.cost(unpriced[state["i"] % 4]) and None,
                   calls=20_000))
    book = manager.prices
    calls = 20_000
    start = time.perf_counter()
    for i in range(calls):
        book.cost(unpriced[i % 4])
    per_call = (time.perf_counter() - start) / calls * 1e6
    report("pricing: PriceBook.cost() alone", per_call, "us")
    book = PriceBook.default()
    log = logging.getLogger("quota_hooks")
    level = log.level
    log.setLevel(logging.ERROR)  # quiet the "cannot price" warning of each model
    try:
        for i in range(10_000):
            book.cost(UsageRecord(model=f"model-{i}", provider="groq", input_tokens=1))
    finally:
        log.setLevel(level)
    assert book.genai is not None
    held = max(len(book.genai._models), len(book.genai._rates), len(book._table_rates))
    report("pricing: cache entries after 10,000 distinct models", held, "entries",
           Goal.of("<=", 4_096))


# ---------------------------------------------------------------------- tenants
def tenants(quick: bool) -> None:
    """Memory per tenant, and whether status() and acquire() stay flat as tenants grow."""
    import random

    count = 10_000 if quick else 100_000
    policy = QuotaPolicy(rpm=1_000, rpd=None, tpm=None, tpd=None, monthly_budget_usd=None)
    one = Estimate(model="gpt-4o-mini", input_tokens=10, output_tokens=10)

    def fill(manager: QuotaManager, n: int, start: int = 0) -> QuotaManager:
        for i in range(start, start + n):
            ws = f"ws-{i}"
            manager.record(UsageRecord(workspace_id=ws, model="gpt-4o-mini", input_tokens=10,
                                       output_tokens=5), manager.acquire(ws, one))
        return manager

    def p50s(managers: list[tuple[QuotaManager, int]]) -> list[tuple[float, float]]:
        """Median status() and acquire()+release() latency (us) of each manager (with its
        number of workspaces), over 2,000 random workspaces each, the managers taking turns
        call by call (so that drift lands on all of them alike)."""
        rng = random.Random(5)
        picks = [[f"ws-{rng.randrange(n)}" for _ in range(2_000)] for _, n in managers]
        status: list[list[float]] = [[] for _ in managers]
        acquire: list[list[float]] = [[] for _ in managers]
        for i in range(2_000):
            order = list(enumerate(managers))
            if i % 2:
                order.reverse()
            for k, (manager, _) in order:
                ws = picks[k][i]
                start = time.perf_counter()
                manager.status(ws)
                status[k].append(time.perf_counter() - start)
                start = time.perf_counter()
                manager.release(manager.acquire(ws, one))
                acquire[k].append(time.perf_counter() - start)
        return [(statistics.median(s) * 1e6, statistics.median(a) * 1e6)
                for s, a in zip(status, acquire, strict=True)]

    gc.collect()
    before = rss_mb()
    big = QuotaManager(policy)
    fill(big, count)
    gc.collect()
    total = rss_mb()

    def held() -> str:
        warm = fill(QuotaManager(policy), 1_000)  # one-time costs (price tables) paid here
        return (f"the process held {before:,.0f} MB before the workspaces; "
                + memory_cause(lambda n: fill(warm, n, start=1_000), 5_000))

    report(f"tenants: RSS with {count:,} workspaces, one call each", total, "MB",
           Goal.of("<=", 400), cause=held)
    report("tenants: memory per workspace", (total - before) * 1024 / count, "KB")
    small = QuotaManager(policy)
    fill(small, 1_000)
    (small_status, small_acquire), (big_status, big_acquire) = p50s([(small, 1_000),
                                                                     (big, count)])
    report(f"tenants: status() p50, {count:,} / 1,000 workspaces", big_status / small_status,
           "x", Goal.of("<=", 1.5))
    report(f"tenants: acquire() p50, {count:,} / 1,000 workspaces",
           big_acquire / small_acquire, "x", Goal.of("<=", 1.5))
