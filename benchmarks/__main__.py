"""Run every benchmark, print a table and write benchmarks/results.json.

Machines here are noisy and small, so every overhead figure is a ratio against a baseline
measured in the same run: A and B alternate round by round (ABAB..., then BABA...), and the
table shows the median ratio and its spread (min-max over rounds). Throughputs are absolute
numbers, printed with the machine line.

    python -m benchmarks            # everything (a few minutes)
    python -m benchmarks --quick    # fewer rounds and records, for a smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from quota_hooks import Estimate, QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.storage import MemoryStore, SQLiteStore, Store

HERE = Path(__file__).resolve().parent
RESULTS: list[dict[str, Any]] = []


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()},"
            f" {platform.system()} {platform.release()}")


def report(name: str, value: float, unit: str, goal: str, ok: bool | None,
           spread: tuple[float, float] | None = None) -> None:
    row = {"benchmark": name, "value": round(value, 4), "unit": unit, "goal": goal,
           "met": ok, "spread": None if spread is None else [round(s, 4) for s in spread]}
    RESULTS.append(row)
    shown = f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    extra = "" if spread is None else f"  [{spread[0]:.3f} .. {spread[1]:.3f}]"
    mark = {True: "ok", False: "MISSED", None: "-"}[ok]
    print(f"{name:<58} {shown:>12} {unit:<10} {goal:<18} {mark}{extra}", flush=True)


def ab(base: Callable[[], None], other: Callable[[], None], n: int, rounds: int
       ) -> tuple[float, tuple[float, float]]:
    """Median and spread of time(other) / time(base) over alternating rounds of n calls."""
    for fn in (base, other):  # warm up
        for _ in range(max(1, n // 10)):
            fn()
    ratios = []
    for r in range(rounds):
        times = {}
        order = (base, other) if r % 2 == 0 else (other, base)
        for fn in order:
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[fn] = time.perf_counter() - start
        ratios.append(times[other] / times[base])
    return statistics.median(ratios), (min(ratios), max(ratios))


# ---------------------------------------------------------------------- core
def record_throughput(store: Store, n: int) -> float:
    manager = QuotaManager(QuotaPolicy.unlimited(), store=store)
    records = [UsageRecord(workspace_id=f"ws{i % 10}", model="gpt-4o-mini", input_tokens=100,
                           output_tokens=20) for i in range(1000)]
    start = time.perf_counter()
    for i in range(n):
        manager.record(records[i % 1000])
    flush = getattr(store, "flush", None)
    if flush is not None:
        flush()
    return n / (time.perf_counter() - start)


def redis_reserve_settle(n: int) -> float | None:
    url = os.environ.get("QUOTA_HOOKS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
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
    rate = record_throughput(MemoryStore(), n)
    report("core: record() memory", rate, "rec/s", ">= 200,000", rate >= 200_000)
    with tempfile.TemporaryDirectory() as tmp:
        rate = record_throughput(SQLiteStore(Path(tmp) / "b.db"), n // 2)
    report("core: record() SQLite (batched, incl. flush)", rate, "rec/s", ">= 50,000",
           rate >= 50_000)
    redis_rate = redis_reserve_settle(2_000 if quick else 10_000)
    if redis_rate is None:
        report("core: Redis reserve+settle (no server)", 0, "ops/s", ">= 10,000", None)
    else:
        report("core: Redis reserve+settle (loopback)", redis_rate, "ops/s", ">= 10,000",
               redis_rate >= 10_000)
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    latencies = status_latencies([(MemoryStore(), size) for size in sizes])
    for size, micros in zip(sizes, latencies, strict=True):
        report(f"core: status() memory, {size:,} records of history", micros, "us", "flat", None)
    flat = max(latencies) / min(latencies)
    report("core: status() largest / smallest history", flat, "x", "<= 1.5 (flat)", flat <= 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        small_store, big_store = SQLiteStore(Path(tmp) / "s.db"), SQLiteStore(Path(tmp) / "b.db")
        small, big = status_latencies([(small_store, 10_000),
                                       (big_store, 100_000 if not quick else 30_000)])
        small_store.close()
        big_store.close()
    report("core: status() SQLite 100k / 10k history", big / small, "x", "<= 1.5 (flat)",
           big / small <= 1.5)
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
    report(f"core: RSS growth over {count:,} records (memory)", growth, "MB", "<= 50",
           growth <= 50)
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
    report("core: acquire+record, enforcing / observe-only", ratio, "x", "<= 1.10",
           ratio <= 1.10, spread)


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
    report("pricing: added to record() after warm-up", added, "us", "<= 3", added <= 3,
           (min(times), max(times)))
    book = manager.prices
    calls = 20_000
    start = time.perf_counter()
    for i in range(calls):
        book.cost(unpriced[i % 4])
    per_call = (time.perf_counter() - start) / calls * 1e6
    report("pricing: PriceBook.cost() alone", per_call, "us", "-", None)
    book = PriceBook.default()
    for i in range(10_000):
        book.cost(UsageRecord(model=f"model-{i}", provider="groq", input_tokens=1))
    assert book.genai is not None
    held = max(len(book.genai._models), len(book.genai._rates), len(book._table_rates))
    report("pricing: cache entries after 10,000 distinct models", held, "entries",
           "<= 4,096", held <= 4_096)


# ---------------------------------------------------------------------- tenants
def tenants(quick: bool) -> None:
    """Memory per tenant, and whether status() and acquire() stay flat as tenants grow."""
    import random

    count = 10_000 if quick else 100_000
    policy = QuotaPolicy(rpm=1_000, rpd=None, tpm=None, tpd=None, monthly_budget_usd=None)
    one = Estimate(model="gpt-4o-mini", input_tokens=10, output_tokens=10)

    def fill(manager: QuotaManager, n: int) -> None:
        for i in range(n):
            ws = f"ws-{i}"
            manager.record(UsageRecord(workspace_id=ws, model="gpt-4o-mini", input_tokens=10,
                                       output_tokens=5), manager.acquire(ws, one))

    def p50(manager: QuotaManager, n: int) -> tuple[float, float]:
        rng = random.Random(5)
        picks = [f"ws-{rng.randrange(n)}" for _ in range(2_000)]
        status, acquire = [], []
        for ws in picks:
            start = time.perf_counter()
            manager.status(ws)
            status.append(time.perf_counter() - start)
            start = time.perf_counter()
            manager.release(manager.acquire(ws, one))
            acquire.append(time.perf_counter() - start)
        return statistics.median(status) * 1e6, statistics.median(acquire) * 1e6

    gc.collect()
    before = rss_mb()
    big = QuotaManager(policy)
    fill(big, count)
    gc.collect()
    total = rss_mb()
    report(f"tenants: RSS with {count:,} workspaces, one call each", total, "MB",
           "<= 400", total <= 400)
    report("tenants: memory per workspace", (total - before) * 1024 / count, "KB", "-", None)
    small = QuotaManager(policy)
    fill(small, 1_000)
    small_status, small_acquire = p50(small, 1_000)
    big_status, big_acquire = p50(big, count)
    report(f"tenants: status() p50, {count:,} / 1,000 workspaces", big_status / small_status,
           "x", "<= 1.5 (flat)", big_status / small_status <= 1.5)
    report(f"tenants: acquire() p50, {count:,} / 1,000 workspaces",
           big_acquire / small_acquire, "x", "<= 1.5 (flat)", big_acquire / small_acquire <= 1.5)


# ---------------------------------------------------------------------- adapters
def openai_overhead(quick: bool) -> None:
    import httpx2
    from openai import OpenAI

    from quota_hooks.adapters.openai import track_openai
    from quota_hooks.testing import FakeOpenAI, FakeUsage

    fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=50))
    fake.requests = _NoList()  # type: ignore[assignment]  # keep memory flat
    plain = OpenAI(api_key="sk", base_url="http://fake/v1", max_retries=0,
                   http_client=httpx2.Client(transport=fake.transport()))
    manager = QuotaManager(QuotaPolicy(mode="observe"))
    tracked = track_openai(OpenAI(api_key="sk", base_url="http://fake/v1", max_retries=0,
                                  http_client=httpx2.Client(transport=fake.transport())),
                           workspace_id="ws", manager=manager)
    enforced = track_openai(OpenAI(api_key="sk", base_url="http://fake/v1", max_retries=0,
                                   http_client=httpx2.Client(transport=fake.transport())),
                            workspace_id="ws", manager=QuotaManager(
                                QuotaPolicy(rpm=None, rpd=None, tpm=10**12, tpd=None,
                                            monthly_budget_usd=Decimal(10**9))))
    msgs: Any = [{"role": "user", "content": "hi"}]
    n, rounds = (100, 5) if quick else (400, 9)
    ratio, spread = ab(lambda: plain.chat.completions.create(model="gpt-4o-mini", messages=msgs),
                       lambda: tracked.chat.completions.create(model="gpt-4o-mini",
                                                               messages=msgs), n, rounds)
    report("openai: track_openai / untracked, non-stream", ratio, "x", "<= 1.05",
           ratio <= 1.05, spread)
    ratio, spread = ab(lambda: plain.chat.completions.create(model="gpt-4o-mini", messages=msgs),
                       lambda: enforced.chat.completions.create(model="gpt-4o-mini",
                                                                messages=msgs), n, rounds)
    report("openai: enforcing track_openai / untracked, non-stream", ratio, "x", "-", None,
           spread)

    def stream(client: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=msgs,
                                                    stream=True,
                                                    stream_options={"include_usage": True}):
                pass
        return run

    fake.chunks = 50
    ratio, spread = ab(stream(plain), stream(tracked), n // 2, rounds)
    report("openai: track_openai / untracked, stream (50 chunks)", ratio, "x", "<= 1.05",
           ratio <= 1.05, spread)
    report("openai: peer (OpenTelemetry instrumentation)", 0, "-", "not installed", None)


class _NoList(list):  # type: ignore[type-arg]
    def append(self, item: Any) -> None:
        pass


def langchain_overhead(quick: bool) -> None:
    from langchain_core.callbacks import UsageMetadataCallbackHandler
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from quota_hooks.adapters.langchain import QuotaCallbackHandler

    usage: Any = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}

    def model() -> GenericFakeChatModel:
        class Endless:
            def __iter__(self) -> Endless:
                return self

            def __next__(self) -> AIMessage:
                return AIMessage(content="ok", usage_metadata=usage,
                                 response_metadata={"model_name": "gpt-4o-mini"})

        return GenericFakeChatModel(messages=Endless())

    bare = model()
    ours = QuotaCallbackHandler(manager=QuotaManager(QuotaPolicy(mode="observe")),
                                workspace_id="ws")
    peer = UsageMetadataCallbackHandler()
    n, rounds = (200, 5) if quick else (1000, 9)
    ours_ratio, spread = ab(lambda: bare.invoke("hi"),
                            lambda: bare.invoke("hi", config={"callbacks": [ours]}), n, rounds)
    report("langchain: QuotaCallbackHandler / no handler", ours_ratio, "x", "-", None, spread)
    peer_ratio, spread = ab(lambda: bare.invoke("hi"),
                            lambda: bare.invoke("hi", config={"callbacks": [peer]}), n, rounds)
    report("langchain: UsageMetadataCallbackHandler / no handler", peer_ratio, "x", "-", None,
           spread)
    ratio, spread = ab(lambda: bare.invoke("hi", config={"callbacks": [peer]}),
                       lambda: bare.invoke("hi", config={"callbacks": [ours]}), n, rounds)
    report("langchain: ours / UsageMetadataCallbackHandler", ratio, "x", "<= 1.00 (peer)",
           ratio <= 1.0, spread)


def litellm_overhead(quick: bool) -> None:
    import litellm

    from quota_hooks.adapters.litellm import QuotaLogger

    manager = QuotaManager(QuotaPolicy(mode="observe"))
    logger = QuotaLogger(manager=manager, default_workspace="ws")
    msgs = [{"role": "user", "content": "hi"}]
    saved = {name: list(getattr(litellm, name, []) or []) for name in
             ("callbacks", "success_callback", "_async_success_callback")}

    def without() -> None:
        litellm.callbacks = []
        litellm.completion(model="gpt-4o-mini", messages=msgs, mock_response="ok")

    def with_logger() -> None:
        litellm.callbacks = [logger]
        litellm.completion(model="gpt-4o-mini", messages=msgs, mock_response="ok")
        manager.drain()

    def without_drained() -> None:
        without()
        manager.drain()

    n, rounds = (50, 5) if quick else (200, 7)
    ratio, spread = ab(without_drained, with_logger, n, rounds)
    for name, value in saved.items():
        setattr(litellm, name, value)
    report("litellm: QuotaLogger / no callback (mock_response)", ratio, "x", "<= 1.05",
           ratio <= 1.05, spread)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--only", choices=["core", "pricing", "tenants", "openai",
                                           "langchain", "litellm"])
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print(f"{'benchmark':<58} {'value':>12} {'unit':<10} {'goal':<18} result  [spread]")
    suites = {"core": core, "pricing": pricing, "tenants": tenants, "openai": openai_overhead,
              "langchain": langchain_overhead, "litellm": litellm_overhead}
    for name, suite in suites.items():
        if args.only in (None, name):
            suite(args.quick)
    out = HERE / "results.json"
    out.write_text(json.dumps({"machine": machine(), "quick": args.quick,
                               "command": "python -m benchmarks" + (" --quick" * args.quick),
                               "results": RESULTS}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
