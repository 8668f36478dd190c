"""RedisStore on a real 3-primary Redis Cluster: workspaces spread over the nodes, several
processes share a limit exactly (across slots too), and a node killed mid-load.

Needs $QUOTA_HOOKS_TEST_REDIS_CLUSTER_URL (``.ci/run`` starts one with ``.ci/redis-cluster``; in
CI a missing cluster fails these tests). The conformance suite runs on it too
(tests/test_store_conformance.py, backend ``redis-cluster``). The node-kill test starts a
cluster of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from store_helpers import (
    T0,
    entry,
    one_request,
    redis_cluster_url,
    redis_store_at,
    run_processes,
)

from quota_hooks import Estimate, QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.errors import StorageError
from quota_hooks.storage import Limits, Reservation
from quota_hooks.storage.redis import RedisStore
from quota_hooks.testing import ManualClock

ROOT = Path(__file__).resolve().parent.parent
MONTH = "2026-01"


@pytest.fixture
def url() -> str:
    found = redis_cluster_url()
    if found is None:
        pytest.skip("no Redis Cluster (CI starts one; set QUOTA_HOOKS_TEST_REDIS_CLUSTER_URL)")
    return found


@pytest.fixture
def store(url: str) -> Iterator[RedisStore]:
    yield from redis_store_at(url)


def _node_of(store: RedisStore, key: str) -> str:
    node = store.client.get_node_from_key(key)  # type: ignore[union-attr]
    return f"{node.host}:{node.port}"


def test_a_thousand_workspaces_land_on_every_node(store: RedisStore) -> None:
    for i in range(1000):
        store.commit(entry(ws=f"tenant-{i}"))
    primaries = {f"{n.host}:{n.port}" for n in store.client.get_primaries()}  # type: ignore[union-attr]
    assert len(primaries) == 3
    # Where each workspace's keys are, read from each node itself (not from the slot map).
    held: Counter[str] = Counter()
    for node in store.client.get_primaries():  # type: ignore[union-attr]
        direct = redis.Redis(host=node.host, port=node.port)
        held[f"{node.host}:{node.port}"] = sum(
            1 for _ in direct.scan_iter(match=store.prefix + ":{*}:w", count=1000))
        direct.close()
    assert sum(held.values()) == 1000
    assert set(held) == primaries and min(held.values()) >= 250, held  # about a third each
    assert len(store.workspaces()) == 1000
    assert store.counters("workspace:tenant-517", T0, MONTH).requests_minute == 1


def test_a_scope_keeps_its_keys_in_one_slot_and_scopes_spread(store: RedisStore) -> None:
    keys = store._scope_keys("workspace:acme", MONTH, "2025-12")
    assert len({store.client.keyslot(k) for k in keys}) == 1  # type: ignore[union-attr]
    slots = {store.client.keyslot(store._scope_keys(f"team:t{i}", MONTH)[0])  # type: ignore[union-attr]
             for i in range(50)}
    assert len(slots) == 50


def test_four_processes_share_a_limit_exactly_across_slots(url: str) -> None:
    """The workspace and its team live on different slots (most likely nodes): each is
    checked and held atomically in its own, and a call the team refuses gives the
    workspace's hold back, so both admit exactly the limit."""
    prefix = f"qh-test-{uuid.uuid4().hex[:8]}"
    code = """
        import sys
        from quota_hooks.storage import Limits, Reservation
        from quota_hooks.storage.redis import RedisStore
        from store_helpers import T0, one_request
        store = RedisStore.from_url(sys.argv[1], prefix=sys.argv[2], use_server_time=False)
        limits = {"team:ml": Limits(rpm=1000)}
        print(sum(
            isinstance(store.reserve(["workspace:ws", "team:ml"], one_request(), limits, T0,
                                     "2026-01", 300), Reservation)
            for _ in range(2500)
        ))
    """
    assert sum(run_processes(code, url, prefix, 4)) == 1000
    store = RedisStore.from_url(url, prefix=prefix, use_server_time=False)
    try:
        assert store.counters("team:ml", T0, MONTH).requests_minute == 1000
        assert store.counters("workspace:ws", T0, MONTH).requests_minute == 1000
    finally:
        store.clear()
        store.close()


def test_a_denial_in_a_later_slot_gives_the_earlier_holds_back(store: RedisStore) -> None:
    limits = {"workspace:ws": Limits(rpm=100), "user:u-7": Limits(rpm=1)}
    scopes = ["workspace:ws", "team:ml", "user:u-7"]
    first = store.reserve(scopes, one_request(5), limits, T0, MONTH, 30)
    assert isinstance(first, Reservation)
    denied = store.reserve(scopes, one_request(5), limits, T0, MONTH, 30)
    assert not isinstance(denied, Reservation)
    assert (denied.scope, denied.limit) == ("user:u-7", "rpm")
    for scope in scopes:  # only the first call's hold is left, in every slot
        counters = store.counters(scope, T0, MONTH)
        assert (counters.requests_minute, counters.tokens_minute) == (1, 5), scope
    store.commit(entry(tokens=7, extra_scopes=("team:ml", "user:u-7")), first)
    for scope in scopes:
        assert store.counters(scope, T0, MONTH).tokens_minute == 7, scope


def test_a_cluster_url_that_no_node_answers_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from quota_hooks.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="no node of the Redis Cluster answered"):
        RedisStore.from_url(f"redis+cluster://127.0.0.1:{port}")
    with pytest.raises(ConfigurationError, match="host:port"):
        RedisStore.from_url("redis+cluster://127.0.0.1")


# ---------------------------------------------------------------------- a node dies
def _free_base_port() -> int:
    for base in range(17400, 18400, 10):
        taken = False
        for port in range(base, base + 3):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise AssertionError("no free ports for a cluster")


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs redis-server on PATH (.ci/run installs it)")
        pytest.skip("redis-server is not installed")
    script = ROOT / ".ci" / "redis-cluster"
    base = _free_base_port()
    started = subprocess.run([str(script), "start", str(tmp_path), str(base)],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip().splitlines()[-1], tmp_path
    finally:
        subprocess.run([str(script), "stop", str(tmp_path)], capture_output=True, timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("fail_open", [True, False])
def test_a_node_killed_mid_load(own_cluster: tuple[str, Path], fail_open: bool) -> None:
    """Kill -9 one of three primaries while calls run: the calls of its workspaces fail open
    (let through, counted as fail_open) or closed (StorageError) as the policy says, never
    hang; the workspaces of the nodes that lived count every call exactly."""
    url, directory = own_cluster
    store = RedisStore.from_url(url + "?socket_timeout=0.5&socket_connect_timeout=0.5",
                                prefix="qh-kill")
    clock = ManualClock(T0)
    manager = QuotaManager(QuotaPolicy(rpm=10_000, fail_open=fail_open), store=store,
                           clock=clock)
    store.use_server_time = False
    workspaces = [f"tenant-{i}" for i in range(30)]
    node_of = {ws: _node_of(store, store._scope_keys(f"workspace:{ws}", MONTH)[0])
               for ws in workspaces}
    victim = node_of[workspaces[0]]
    assert len(set(node_of.values())) == 3

    def call(ws: str) -> str:
        try:
            held = manager.acquire(ws, Estimate(model="gpt-4o-mini", input_tokens=10,
                                                output_tokens=0))
        except StorageError:
            return "refused"
        manager.record(UsageRecord(workspace_id=ws, model="gpt-4o-mini", input_tokens=10),
                       held)
        return "done"

    done: Counter[str] = Counter()
    for ws in workspaces:  # before: every call counted
        assert call(ws) == "done"
        done[ws] += 1
    pid = int((directory / f"redis-{victim.rpartition(':')[2]}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    outcomes: dict[str, Counter[str]] = {ws: Counter() for ws in workspaces}
    for _ in range(3):
        for ws in workspaces:
            outcome = call(ws)
            outcomes[ws][outcome] += 1
            if outcome == "done" and node_of[ws] != victim:
                done[ws] += 1
    assert time.monotonic() - started < 20  # failures are fast, nothing hangs
    dead = [ws for ws in workspaces if node_of[ws] == victim]
    alive = [ws for ws in workspaces if node_of[ws] != victim]
    for ws in dead:
        expected = "done" if fail_open else "refused"
        assert outcomes[ws] == Counter({expected: 3}), (ws, outcomes[ws])
    assert manager.fail_open_calls == (3 * len(dead) if fail_open else 0)
    for ws in alive:
        assert outcomes[ws] == Counter({"done": 3}), (ws, outcomes[ws])
        counters = store.counters(f"workspace:{ws}", T0, MONTH)
        assert (counters.requests_minute, counters.tokens_minute) == (4, 40), ws
    store.close(timeout=0.5)


def test_store_from_url_picks_the_cluster_and_the_prefix(url: str) -> None:
    from quota_hooks.storage import store_from_url

    store = store_from_url(url + "?prefix=qh-url-test&socket_timeout=2")
    assert isinstance(store, RedisStore) and store._cluster
    assert store.prefix == "qh-url-test"
    assert "cluster" in repr(store) and "qh-url-test" in repr(store)
    store.commit(entry())
    assert store.workspaces() == ["ws"]
    store.clear()
    store.close()


@pytest.mark.slow
def test_a_later_slot_that_fails_gives_the_earlier_holds_back(
    own_cluster: tuple[str, Path],
) -> None:
    """The team's node hangs: reserving workspace+team fails (a StorageError), and the
    workspace, on a node that answers, keeps no hold: its own calls still fit its limit."""
    url, directory = own_cluster
    store = RedisStore.from_url(url + "?socket_timeout=0.3&socket_connect_timeout=0.3",
                                prefix="qh-ghost", use_server_time=False)
    team = next(f"team:t{i}" for i in range(100)
                if _node_of(store, store._scope_keys(f"team:t{i}", MONTH)[0])
                != _node_of(store, store._scope_keys("workspace:ws", MONTH)[0]))
    limits = {"workspace:ws": Limits(rpm=100)}
    assert isinstance(store.reserve(["workspace:ws", team], one_request(1), limits, T0, MONTH,
                                    3600), Reservation)  # both slots' scripts are loaded
    port = _node_of(store, store._scope_keys(team, MONTH)[0]).rpartition(":")[2]
    pid = int((directory / f"redis-{port}.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(20):
            with pytest.raises(StorageError):
                store.reserve(["workspace:ws", team], one_request(1), limits, T0, MONTH, 3600)
        assert store.counters("workspace:ws", T0, MONTH).requests_minute == 1
        started = time.monotonic()
        admitted = sum(isinstance(store.reserve(["workspace:ws"], one_request(1), limits, T0,
                                                MONTH, 3600), Reservation) for _ in range(120))
        assert admitted == 99
        # The hung node's replays are not retried on every call that reaches a live node.
        assert time.monotonic() - started < 5
    finally:
        os.kill(pid, signal.SIGCONT)
    store.close(timeout=1)
