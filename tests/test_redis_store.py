"""RedisStore beyond the conformance suite: processes, restart, server time, key TTLs.

Needs a Redis server: $QUOTA_HOOKS_TEST_REDIS_URL or 127.0.0.1:6379 (.ci/run starts one; in CI a
missing server fails these tests). The restart test starts its own redis-server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from store_helpers import (
    T0,
    entry,
    one_request,
    redis_store_at,
    redis_url,
    rpm,
    run_processes,
)

from quota_hooks import Estimate, QuotaManager, QuotaPolicy, QuotaStatus, UsageRecord
from quota_hooks.errors import ConfigurationError, StorageError
from quota_hooks.storage import Limits, Reservation
from quota_hooks.storage.redis import RedisStore
from quota_hooks.testing import ManualClock

ROOT = Path(__file__).resolve().parent.parent
MONTH = "2026-01"


@pytest.fixture
def url() -> str:
    found = redis_url()
    if found is None:
        pytest.skip("no Redis server on 127.0.0.1:6379 (CI starts one)")
    return found


@pytest.fixture
def store(url: str) -> Iterator[RedisStore]:
    yield from redis_store_at(url)


def test_four_processes_share_a_limit_exactly(url: str) -> None:
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    code = """
        import sys
        from quota_hooks.storage import Reservation
        from quota_hooks.storage.redis import RedisStore
        from store_helpers import T0, one_request, rpm
        store = RedisStore.from_url(sys.argv[1], prefix=sys.argv[2], use_server_time=False)
        print(sum(
            isinstance(store.reserve(["workspace:ws"], one_request(), rpm(1000), T0, "2026-01",
                                     300), Reservation)
            for _ in range(2500)
        ))
    """
    assert sum(run_processes(code, url, prefix, 4)) == 1000
    store = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    assert store.counters("workspace:ws", T0, MONTH).requests_minute == 1000
    store.clear()


def test_every_key_has_a_ttl(store: RedisStore) -> None:
    held = store.reserve(["workspace:ws", "team:ml"], one_request(5), rpm(10), T0, MONTH, 30)
    assert isinstance(held, Reservation)
    store.commit(entry(extra_scopes=("team:ml",)), held)
    store.commit(entry(extra_scopes=("team:ml",)))
    store.claim("alert:ws:rpm:warning", T0, 60)
    keys = sorted(store.client.scan_iter(match=store.prefix + ":*"))
    # Per scope: its state, pending expiries, month and recent list; the done-ids of the
    # commits' window; the workspaces, the claim and the schema marker.
    assert len(keys) == 2 * 4 + 1 + 3, keys
    schema = f"{store.prefix}:schema".encode()
    assert store.client.get(schema) == b"2" and store.client.ttl(schema) == -1
    assert all(store.client.ttl(key) > 0 for key in keys if key != schema)
    # tenant ids are values, never key names
    assert not any(b"ws" in key[len(store.prefix):] or b"ml" in key[len(store.prefix):]
                   for key in keys)


def test_server_time_ignores_client_clock_skew(url: str) -> None:
    store = RedisStore.from_url(url, prefix=f"qh-test-{uuid.uuid4().hex[:8]}")
    try:
        now = time.time()
        month = time.strftime("%Y-%m", time.gmtime(now))
        store.commit(entry(now=now - 3600))  # a client clock an hour behind
        counters = store.counters("workspace:ws", now + 7200, month)  # and one two hours ahead
        assert counters.requests_minute == 1  # both were placed at the server's own now
    finally:
        store.clear()


def test_an_unreachable_server_holds_commits_and_reads_fail() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", backlog_size=2)
    store.commit(entry())  # held for replay, not lost, not raised
    assert store.health() == "Redis did not answer: 1 commit(s) held for replay"
    with pytest.raises(StorageError, match="counters failed"):  # a read never guesses
        store.counters("workspace:ws", T0, "2026-01")
    manager = QuotaManager(QuotaPolicy(), store=store, clock=ManualClock(T0))
    manager.record(UsageRecord(workspace_id="ws"))  # never raises
    manager.record(UsageRecord(workspace_id="ws"))  # the backlog is full: dropped, counted
    assert store.dropped_records == 1 and manager.tracking_errors == 0
    assert manager.health.degraded("ws", T0, manager.store)


def test_redis_restart(tmp_path: Path) -> None:
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs redis-server on PATH (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    proc = start()
    try:
        store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", use_server_time=False)
        clock = ManualClock(T0)
        manager = QuotaManager(QuotaPolicy(rpm=100), store=store, clock=clock)
        manager.record(UsageRecord(workspace_id="ws", input_tokens=5))
        proc.terminate()  # a clean restart: the append-only file keeps the data
        proc.wait(10)
        manager.record(UsageRecord(workspace_id="ws", input_tokens=5))  # held: server down
        assert manager.tracking_errors == 0 and store.health() is not None
        with pytest.raises(StorageError):  # a status read says so, it does not guess
            manager.status("ws")
        proc = start()
        # The next commit reloads the scripts and replays the held one: nothing was lost.
        manager.record(UsageRecord(workspace_id="ws", input_tokens=7))
        report = manager.status("ws")
        assert report.tokens_per_minute.current == 17
        assert report.requests_per_minute.current == 3
        assert store.health() is None and report.status is QuotaStatus.NORMAL
    finally:
        proc.terminate()
        proc.wait(10)


def test_commands_per_reserve_and_settle(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """A reserve+settle pair on one scope costs 2 scripts and at most 16 commands inside them
    (the first layout ran about 103), EXPIRE only where a TTL is set or moves."""
    url = own_redis[0]
    store = RedisStore.from_url(url)
    now = time.time()
    month = time.strftime("%Y-%m", time.gmtime(now))
    limits = {"workspace:ws": Limits(rpm=10**6, tpm=10**9, rpd=10**7, tpd=10**10,
                                     budget_nanos=10**15)}
    record = entry(now=now)

    def pair() -> None:
        held = store.reserve(["workspace:ws"], one_request(10), limits, now, month, 600)
        assert isinstance(held, Reservation)
        store.commit(record, held)

    pair()  # the scope's first call creates its keys and sets their TTLs
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    for _ in range(50):
        pair()
    stats = client.info("commandstats")
    client.close()
    calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
    assert calls.pop("evalsha") == 100
    calls.pop("config|resetstat", None)
    # Once a minute at most (the state's TTL moves, the reaper looks): none in a minute.
    assert calls.get("expire", 0) <= 2, calls
    assert sum(calls.values()) <= 50 * 16, calls
    assert store.counters("workspace:ws", now, month).requests_minute == 51
    store.close()


def test_a_store_of_the_first_layout_is_refused(url: str) -> None:
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    client.sadd("{" + prefix + "}:workspaces", "ws")  # what the first layout always wrote
    try:
        with pytest.raises(ConfigurationError, match=rf"prefix '{prefix}' holds a store of "
                           r"quota-hooks' first key layout .* another prefix"):
            RedisStore.from_url(url, prefix=prefix)
    finally:
        client.delete("{" + prefix + "}:workspaces")
    client.set(prefix + ":schema", "3")
    try:
        with pytest.raises(ConfigurationError, match=r"schema '3'.*reads schema 2 only"):
            RedisStore.from_url(url, prefix=prefix)
    finally:
        client.delete(prefix + ":schema")
        client.close()
    fresh = RedisStore.from_url(url, prefix=prefix)
    assert fresh.client.get(prefix + ":schema") == b"2"  # a new store marks its layout
    fresh.clear()
    fresh.close()


def test_a_layout_found_after_start_is_refused_at_first_use(url: str) -> None:
    """A store built while Redis was down checks the layout when Redis answers."""
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(url, prefix=prefix)
    store._schema_ok = False  # as if Redis had not answered at construction
    store.client.set(prefix + ":schema", "9")
    try:
        with pytest.raises(StorageError, match="schema '9'"):
            store.counters("workspace:ws", T0, MONTH)
        manager = QuotaManager(QuotaPolicy(rpm=1, fail_open=False), store=store)
        with pytest.raises(StorageError, match="schema '9'"):
            manager.acquire("ws", Estimate(input_tokens=1, output_tokens=0))
    finally:
        store.client.delete(prefix + ":schema")
        store.close()


def test_concurrent_threads_share_round_trips_and_admit_exactly(store: RedisStore) -> None:
    """8 threads reserve and settle at once: their calls share runs of the scripts (more
    than one call a round trip) and the limit admits exactly its number."""
    admitted: list[int] = []
    lock = threading.Lock()
    limits = {"workspace:ws": Limits(rpm=1000)}

    def work() -> None:
        mine = 0
        for _ in range(250):
            held = store.reserve(["workspace:ws", "team:ml"], one_request(3), limits, T0,
                                 MONTH, 300)
            if isinstance(held, Reservation):
                mine += 1
                store.commit(entry(tokens=4, extra_scopes=("team:ml",)), held)
        with lock:
            admitted.append(mine)

    batches = store._batch.batches
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 1000
    sent = 8 * 250 + 1000  # reserves and commits
    assert store._batch.batches - batches < sent  # some calls shared a round trip
    for scope in ("workspace:ws", "team:ml"):
        counters = store.counters(scope, T0, MONTH)
        assert (counters.requests_minute, counters.tokens_minute) == (1000, 4000), scope
    assert len(store.recent("workspace:ws", 2000)) == 1000
    assert store.breakdown("team:ml", MONTH, "model")["gpt-4o-mini"].requests == 1000


def test_the_url_names_the_prefix(url: str) -> None:
    from quota_hooks.storage import store_from_url

    joiner = "&" if "?" in url else "?"
    store = store_from_url(url + joiner + "prefix=qh-url%2Dtest&lease_calls=16")
    assert isinstance(store, RedisStore) and not store._cluster
    assert (store.prefix, store.lease_calls) == ("qh-url-test", 16)
    with pytest.raises(ConfigurationError,
                       match=r"lease_calls must be a whole number, got 'many'"):
        store_from_url(url + joiner + "lease_calls=many")
    store.commit(entry())
    assert store.client.exists("qh-url-test:workspaces")
    store.clear()
    store.close()


# ---------------------------------------------------------------------- leases
def _lease_store(url: str, prefix: str, calls: int = 32) -> RedisStore:
    return RedisStore.from_url(url, prefix=prefix, use_server_time=False, lease_calls=calls)


def test_a_lease_admits_exactly_the_limit_and_gives_back_what_it_did_not_use(url: str) -> None:
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    store = _lease_store(url, prefix)
    limits = {"workspace:ws": Limits(rpm=100, budget_nanos=10**12)}
    admitted = 0
    for _ in range(150):
        held = store.reserve(["workspace:ws"], one_request(10), limits, T0, MONTH, 60)
        if isinstance(held, Reservation):
            admitted += 1
            store.commit(entry(tokens=12), held)
    trips = store._batch.batches
    assert admitted == 100
    assert trips < 100 + 150  # most reserves were a lease's share, with no round trip
    store.reserve(["workspace:other"], one_request(10), {}, T0, MONTH, 60)  # a lease, unused
    store.close()  # gives back what its leases did not hand out
    fresh = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    counters = fresh.counters("workspace:ws", T0, MONTH)
    assert (counters.requests_minute, counters.tokens_minute) == (100, 1200)
    assert counters.cost_month_nanos == 100 * 1_000_000
    assert fresh.counters("workspace:other", T0, MONTH).requests_minute == 1
    pending = [f for f in fresh.client.hkeys(fresh._scope_keys("workspace:ws", MONTH)[0])
               if f.startswith(b"p:")]
    assert pending == []
    fresh.clear()
    fresh.close()


def test_leases_in_four_processes_never_pass_the_limit(url: str) -> None:
    """Leases are holds in Redis: together they never pass a limit. What they cost is room
    a process holds and has not used while another is refused: at most one lease (32 calls
    here) a process, given back when the process closes."""
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    code = """
        import sys
        from quota_hooks.storage import Limits, Reservation
        from quota_hooks.storage.redis import RedisStore
        from store_helpers import T0, entry, one_request
        store = RedisStore.from_url(sys.argv[1], prefix=sys.argv[2], use_server_time=False,
                                    lease_calls=32)
        limits = {"workspace:ws": Limits(rpm=1000)}
        admitted = 0
        for _ in range(2500):
            held = store.reserve(["workspace:ws"], one_request(1), limits, T0, "2026-01", 300)
            if isinstance(held, Reservation):
                admitted += 1
                store.commit(entry(tokens=1), held)
        store.close()
        print(admitted)
    """
    admitted = sum(run_processes(code, url, prefix, 4))
    assert 1000 - 4 * 32 <= admitted <= 1000
    store = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    counters = store.counters("workspace:ws", T0, MONTH)
    assert counters.requests_minute == admitted  # every unused part was given back
    store.clear()
    store.close()


def test_a_dead_process_lease_is_held_until_its_window_moves_on(url: str) -> None:
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    code = """
        import os, sys
        from quota_hooks.storage import Limits, Reservation
        from quota_hooks.storage.redis import RedisStore
        from store_helpers import T0, one_request
        store = RedisStore.from_url(sys.argv[1], prefix=sys.argv[2], use_server_time=False,
                                    lease_calls=32)
        held = store.reserve(["workspace:ws"], one_request(1), {"workspace:ws": Limits(rpm=1000)},
                             T0, "2026-01", 30)
        assert isinstance(held, Reservation)
        os._exit(0)  # dies without closing: the lease is not given back
    """
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    subprocess.run([sys.executable, "-c", textwrap.dedent(code), url, prefix], env=env,
                   check=True, timeout=60)
    store = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    assert store.counters("workspace:ws", T0, MONTH).requests_minute == 32  # the whole lease
    assert store.counters("workspace:ws", T0 + 61, MONTH).requests_minute == 0
    store.clear()
    store.close()


def test_lease_options_are_checked() -> None:
    client = redis.Redis(port=1)  # never used: the options are checked first
    for bad, message in [({"lease_calls": -1}, "lease_calls must be a whole number >= 0"),
                         ({"lease_calls": True}, "lease_calls"),
                         ({"lease_seconds": 0}, r"lease_seconds must be .* \(0, 10\]"),
                         ({"lease_seconds": 60}, "lease_seconds")]:
        with pytest.raises(ConfigurationError, match=message):
            RedisStore(client, **bad)  # type: ignore[arg-type]


def test_leases_under_eight_threads_admit_within_the_limit(url: str) -> None:
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    store = _lease_store(url, prefix, calls=16)
    limits = {"workspace:ws": Limits(rpm=500)}
    admitted: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        mine = 0
        for _ in range(100):
            held = store.reserve(["workspace:ws"], one_request(2), limits, T0, MONTH, 60)
            if isinstance(held, Reservation):
                mine += 1
                store.commit(entry(tokens=3), held)
        with lock:
            admitted.append(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    total = sum(admitted)
    assert 500 - 16 <= total <= 500  # one process: at most one lease's room unused at the end
    fresh = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    counters = fresh.counters("workspace:ws", T0, MONTH)
    assert (counters.requests_minute, counters.tokens_minute) == (total, 3 * total)
    fresh.clear()
    fresh.close()


def test_batched_settles_land_at_flush_close_and_before_reads(url: str) -> None:
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(url + ("&" if "?" in url else "?") + "durability=batched",
                                prefix=prefix, use_server_time=False)
    assert store.durability == "batched"
    for _ in range(300):
        store.commit(entry())  # queued for the writer thread
    # A read in this process waits for what it committed.
    assert store.counters("workspace:ws", T0, MONTH).requests_minute == 300
    for _ in range(200):
        store.commit(entry(tokens=1))
    assert store.flush(10)
    other = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    assert other.counters("workspace:ws", T0, MONTH).requests_minute == 500
    for _ in range(50):
        store.commit(entry(tokens=2))
    store.close()  # flushes
    counters = other.counters("workspace:ws", T0, MONTH)
    assert (counters.requests_minute, counters.tokens_minute) == (550, 300 * 10 + 200 + 100)
    assert store.dropped_records == 0
    with pytest.raises(ConfigurationError, match="durability must be 'sync' or 'batched'"):
        RedisStore.from_url(url, prefix=prefix, durability="later")  # type: ignore[arg-type]
    other.clear()
    other.close()


def test_a_lease_share_settles_once(url: str) -> None:
    """A record and then a release of the same call (an adapter that recorded it already)
    take the call's share off its lease once: the lease still holds its other calls."""
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    store = _lease_store(url, prefix, calls=8)
    limits = {"workspace:ws": Limits(rpm=100)}
    shares = [store.reserve(["workspace:ws"], one_request(1), limits, T0, MONTH, 60)
              for _ in range(4)]
    assert all(isinstance(s, Reservation) for s in shares)
    held = store.counters("workspace:ws", T0, MONTH).requests_minute
    assert held == 8  # one lease of 8 calls
    store.commit(entry(tokens=1), shares[0])
    store.commit(entry(tokens=1), shares[0])  # twice: the second adds its usage, undoes nothing
    assert store.release(shares[0], T0) is False
    assert store.release(shares[0], T0) is False
    assert store.release(shares[1], T0) is True
    assert store.release(shares[1], T0) is False
    # 2 recorded + 2 shares still out + 4 never handed out; the released share is gone.
    assert store.counters("workspace:ws", T0, MONTH).requests_minute == 2 + 2 + 4
    store.clear()
    store.close()


def test_a_burst_on_leases_takes_one_lease(url: str) -> None:
    """64 threads reserving at once: one takes the lease, the others reserve their own call
    meanwhile, so every one fits (a lease a call would take the room from the others)."""
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    store = _lease_store(url, prefix, calls=64)
    limits = {"workspace:ws": Limits(rpm=500)}
    start = threading.Barrier(64)
    results: list[object] = []

    def one() -> None:
        start.wait()
        results.append(store.reserve(["workspace:ws"], one_request(1), limits, T0, MONTH, 60))

    threads = [threading.Thread(target=one) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(r, Reservation) for r in results) == 64
    store.clear()
    store.close()


def test_pending_reservations_never_settled_are_reaped(url: str) -> None:
    """300 reservations a minute that nobody settles (ttl 30 s): the reaper keeps the pending
    fields to what is not expired yet, minute after minute."""
    store = RedisStore.from_url(url, prefix=f"qh-test-{uuid.uuid4().hex[:8]}",
                                use_server_time=False)
    limits = {"workspace:ws": Limits(rpm=10**6)}
    state = store._scope_keys("workspace:ws", MONTH)[0]
    for minute in range(15):
        for i in range(300):
            now = T0 + minute * 60 + i * 0.1
            assert isinstance(store.reserve(["workspace:ws"], one_request(1), limits, now,
                                            MONTH, 30), Reservation)
    pending = sum(1 for f in store.client.hkeys(state) if f.startswith(b"p:"))
    assert pending <= 2 * 300, pending  # the last minute's, and the one before at most
    assert store.client.zcard(store._scope_keys("workspace:ws", MONTH)[1]) <= 2 * 300 + 1
    store.clear()
    store.close()


def test_a_cancelled_areserve_gives_its_hold_back(url: str) -> None:
    store = RedisStore.from_url(url, prefix=f"qh-test-{uuid.uuid4().hex[:8]}",
                                use_server_time=False)
    limits = {"workspace:ws": Limits(rpm=10**5)}

    async def main() -> None:
        async def one() -> None:
            held = await asyncio.wait_for(
                store.areserve(["workspace:ws"], one_request(), limits, T0, MONTH, 30), 0.002)
            await store.acommit(entry(tokens=0), held)

        outcomes = await asyncio.gather(*(one() for _ in range(300)), return_exceptions=True)
        cancelled = sum(isinstance(o, asyncio.TimeoutError) for o in outcomes)
        assert cancelled > 0
        done = sum(o is None for o in outcomes)
        await asyncio.sleep(0.3)
        held = await store.areserve(["workspace:ws"], one_request(), limits, T0, MONTH, 30)
        await store.acommit(entry(tokens=0), held)  # Redis answers: the holds go back
        counters = await store.acounters("workspace:ws", T0, MONTH)
        assert counters.requests_minute == counters.calls_minute == done + 1

    asyncio.run(main())
    store.clear()
    store.close()


def _admits_calls_over_their_estimate(store: RedisStore) -> int:
    """Of 20 calls that each reserve 10 tokens and use 400, how many tpm=1000 admits."""
    limits = {"workspace:ws": Limits(tpm=1000)}
    count = 0
    for _ in range(20):
        held = store.reserve(["workspace:ws"], one_request(10), limits, T0, MONTH, 60)
        if isinstance(held, Reservation):
            count += 1
            store.commit(entry(tokens=400), held)
    return count


def test_batched_settles_never_let_a_limit_pass(url: str) -> None:
    """Each call reserves 10 tokens and uses 400: a reserve waits for the queued settles, so
    batched admits what sync admits."""
    admitted = {}
    for durability in ("sync", "batched"):
        store = RedisStore.from_url(url, prefix=f"qh-test-{uuid.uuid4().hex[:8]}",
                                    use_server_time=False, durability=durability)
        count = _admits_calls_over_their_estimate(store)
        admitted[durability] = count
        store.clear()
        store.close()
    assert admitted == {"sync": 3, "batched": 3}


def held_commits(url: str, n: int) -> RedisStore:
    """A store of its own whose backlog holds ``n`` commits of one request each."""
    store = RedisStore.from_url(url, prefix=f"qh-test-{uuid.uuid4().hex[:8]}",
                                use_server_time=False)
    for i in range(n):
        store._keep(entry(tokens=1), None, f"held-{i}")
    return store


def test_a_replay_that_fails_part_way_keeps_the_rest(url: str) -> None:
    store = held_commits(url, 20)
    calls = 0
    run = store._run

    def flaky(name: str, keys: Any, args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:  # the third commit of the replay fails
            raise StorageError("Redis went away")
        return run(name, keys, args)

    store._run = flaky  # type: ignore[method-assign]
    store._replay()
    store._run = run  # type: ignore[method-assign]
    counted = store.counters("workspace:ws", T0, MONTH).requests_minute
    assert counted >= 1 and len(store._backlog) == 20 - counted  # nothing dropped
    store._replay_after = 0.0
    store._replay()
    assert not store._backlog
    assert store.counters("workspace:ws", T0, MONTH).requests_minute == 20
    store.clear()
    store.close()


def test_a_held_commit_that_can_never_be_written_is_dropped_not_blocking_the_rest(
    url: str,
) -> None:
    store = held_commits(url, 5)
    calls = 0
    run = store._run

    def wrong_type_once(name: str, keys: Any, args: Any) -> Any:
        nonlocal calls
        calls += name == "commit"
        if name == "commit" and calls == 2:  # the second one meets a wrong key type, for good
            try:
                raise redis.ResponseError("WRONGTYPE Operation against a key")
            except redis.ResponseError as exc:
                raise StorageError("commit failed: WRONGTYPE") from exc
        return run(name, keys, args)

    store._run = wrong_type_once  # type: ignore[method-assign]
    store._replay()
    store._run = run  # type: ignore[method-assign]
    assert not store._backlog and store.dropped_records == 1
    assert store.counters("workspace:ws", T0, MONTH).requests_minute == 4
    assert store.health() == "Redis did not answer: 1 commit(s) dropped"
    store.clear()
    store.close()


def test_a_lease_taker_cancelled_while_it_waits_leaves_no_lease_taken(url: str) -> None:
    store = RedisStore.from_url(url, prefix=f"qh-test-{uuid.uuid4().hex[:8]}",
                                use_server_time=False, lease_calls=16, durability="batched")
    limits = {"workspace:ws": Limits(rpm=1000)}
    slow = store._settled

    def slow_settle() -> None:
        time.sleep(0.5)
        slow()

    async def main() -> None:
        store.commit(entry())  # queued: the next reserve that asks Redis waits for it
        store._settled = slow_settle  # type: ignore[method-assign]
        task = asyncio.create_task(
            store.areserve(["workspace:ws"], one_request(1), limits, T0, MONTH, 60))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not store._leasing
        store._settled = slow  # type: ignore[method-assign]
        started = time.monotonic()
        held = await store.areserve(["workspace:ws"], one_request(1), limits, T0, MONTH, 60)
        assert isinstance(held, Reservation) and time.monotonic() - started < 0.4

    asyncio.run(main())
    store.clear()
    store.close()


def test_aclose_writes_what_the_backlog_holds(url: str) -> None:
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    for i in range(10):
        store._keep(entry(), None, f"held-{i}")

    async def main() -> None:
        await store.aclose()

    asyncio.run(main())
    assert store.dropped_records == 0
    other = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    assert other.counters("workspace:ws", T0, MONTH).requests_minute == 10
    other.clear()
    other.close()


def test_a_call_that_uses_more_than_its_share_ends_the_lease(url: str) -> None:
    """Each call reserves 10 tokens and uses 400: with leases, as without, the next call asks
    Redis once real usage is over the estimate, so tpm admits what fits (3 of 20)."""
    admitted = {}
    for calls in (0, 32):
        store = RedisStore.from_url(url, prefix=f"qh-test-{uuid.uuid4().hex[:8]}",
                                    use_server_time=False, lease_calls=calls)
        count = _admits_calls_over_their_estimate(store)
        admitted[calls] = count
        store.close()
        fresh = RedisStore.from_url(url, prefix=store.prefix, use_server_time=False)
        assert fresh.counters("workspace:ws", T0, MONTH).tokens_minute == 400 * count
        fresh.clear()
        fresh.close()
    assert admitted == {0: 3, 32: 3}


def test_a_breakdown_row_of_the_older_layout_is_read_and_extended(store: RedisStore) -> None:
    """Rows written before the token mix was kept (8 numbers) read with 0 cached, cache-write
    and reasoning tokens, and the next commit extends them."""
    import struct

    key = store._scope_keys("workspace:ws", MONTH)[2]
    store.client.hset(key, "m:gpt-4o-mini", struct.pack("<8q", 2, 0, 20, 20, 0, 5, 0, 0))
    row = store.breakdown("workspace:ws", MONTH, "model")["gpt-4o-mini"]
    assert (row.requests, row.tokens, row.cost_nanos, row.reasoning_tokens) == (2, 20, 5, 0)
    store.commit(entry(tokens=10))
    row = store.breakdown("workspace:ws", MONTH, "model")["gpt-4o-mini"]
    assert (row.requests, row.tokens, row.input_tokens, row.cached_input_tokens) == (3, 30, 30, 0)


def test_commits_redis_refuses_for_a_while_are_held_not_lost(
    own_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Out of memory (and the same for a replica that is read-only after a failover): Redis
    refuses the commit script before it runs. The default (sync) store holds those commits
    for replay, like one Redis never answered, and writes them once Redis takes writes."""
    url = own_redis[0]
    store = RedisStore.from_url(url)
    manager = QuotaManager(QuotaPolicy(rpm=100, rpd=None, tpm=None, tpd=None, mode="raise"),
                           store=store)
    admin = redis.Redis.from_url(url)
    try:
        manager.record(UsageRecord(workspace_id="ws", input_tokens=1))
        admin.config_set("maxmemory", 1)
        for _ in range(3):  # admitted (the store fails open), then refused by Redis
            manager.record(UsageRecord(workspace_id="ws", input_tokens=10))
        assert store.health() == "Redis did not answer: 3 commit(s) held for replay"
        assert store.dropped_records == 0
        admin.config_set("maxmemory", 0)
        manager.record(UsageRecord(workspace_id="ws", input_tokens=100))  # replays the rest
        status = manager.status("ws", enhanced=False)
        assert status.requests_per_minute.current == 5
        assert status.tokens_per_day.current == 131
        assert store.health() is None
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
        store.close()
