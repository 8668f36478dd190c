"""The Redis suite: reserve+settle pairs per second from one process, server time and commands
per pair (INFO commandstats, SLOWLOG), leases and batched settles, and a 3-node Cluster
against one node.

It starts its own redis-server (and its own 3-node Cluster with ``.ci/redis-cluster``) on free
127.0.0.1 ports, so that the command statistics are this suite's alone. A pair is what a
tracked call costs the store: ``reserve`` before the call, ``commit`` of its record after;
with batched settles a run ends once every commit is in Redis (``flush()``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis as redis_py

from quota_hooks.storage import Limits, Reservation, UsageDelta, UsageEntry
from quota_hooks.storage.redis import RedisStore
from quota_hooks.usage import UsageRecord
from quota_hooks.windows import month_key

from ._harness import Goal, Spread, note, report, spread_of

ROOT = Path(__file__).resolve().parent.parent
LIMITS = Limits(rpm=10**9, tpm=10**12, rpd=10**10, tpd=10**13, budget_nanos=10**18)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _server() -> Iterator[int]:
    directory = tempfile.mkdtemp()
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", directory],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis_py.Redis(port=port)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis_py.ConnectionError:
                time.sleep(0.05)
        yield port
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _free_base_port() -> int:
    """Three free ports in a row, low enough for a Cluster's bus ports (port + 10,000)."""
    for base in range(21000, 31000, 10):
        try:
            for port in range(base, base + 3):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no three free ports for a Cluster")


@contextmanager
def _cluster() -> Iterator[str | None]:
    directory = tempfile.mkdtemp()
    script = ROOT / ".ci" / "redis-cluster"
    base = _free_base_port()
    started = subprocess.run([str(script), "start", directory, str(base)],
                             capture_output=True, text=True, timeout=60)
    try:
        yield started.stdout.strip().splitlines()[-1] if started.returncode == 0 else None
    finally:
        subprocess.run([str(script), "stop", directory], capture_output=True, timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


class _Pairs:
    """reserve+settle pairs on one store, from threads or from tasks."""

    def __init__(self, store: RedisStore, workspaces: int = 1) -> None:
        self.store = store
        self.month = month_key(time.time())
        self.names = [f"ws-{i}" for i in range(workspaces)]
        self.entries = [self._entry(name) for name in self.names]
        self.scopes = [[entry.scopes[0]] for entry in self.entries]
        self.limits = [{scope[0]: LIMITS} for scope in self.scopes]
        self.delta = UsageDelta(requests=1, tokens=120, cost_nanos=30_000)

    def _entry(self, workspace: str) -> UsageEntry:
        record = UsageRecord(workspace_id=workspace, model="gpt-4o-mini", input_tokens=100,
                             output_tokens=20)
        delta = UsageDelta(requests=1, tokens=120, cost_nanos=27_000, calls=1)
        return UsageEntry(record, (f"workspace:{workspace}",), delta, time.time(), self.month,
                          None, None)

    def pair(self, i: int) -> None:
        k = i % len(self.names)
        held = self.store.reserve(self.scopes[k], self.delta, self.limits[k], time.time(),
                                  self.month, 600)
        assert isinstance(held, Reservation), held
        self.store.commit(self.entries[k], held)

    async def apair(self, i: int) -> None:
        k = i % len(self.names)
        held = await self.store.areserve(self.scopes[k], self.delta, self.limits[k],
                                         time.time(), self.month, 600)
        assert isinstance(held, Reservation), held
        await self.store.acommit(self.entries[k], held)

    def threads(self, n: int, workers: int) -> float:
        """Pairs per second from ``workers`` threads, ``n`` pairs in all."""
        def work(start: int) -> None:
            for i in range(start, n, workers):
                self.pair(i)

        pool = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        began = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        self.store.flush()  # batched settles count once they are in Redis
        return n / (time.perf_counter() - began)

    def tasks(self, n: int, workers: int) -> float:
        """Pairs per second from ``workers`` tasks on one event loop."""
        async def run() -> float:
            async def work(start: int) -> None:
                for i in range(start, n, workers):
                    await self.apair(i)

            await self.apair(0)  # the loop's client is connected
            began = time.perf_counter()
            await asyncio.gather(*(work(w) for w in range(workers)))
            await asyncio.to_thread(self.store.flush)
            took = time.perf_counter() - began
            client, _ = self.store._aclient()  # this loop's client goes with the loop
            await client.aclose()
            self.store._async.pop(asyncio.get_running_loop(), None)
            return n / took

        return asyncio.run(run())


def _rounds(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each variant once a round, in a rotating order."""
    found: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order if r % 2 == 0 else reversed(order):
            found[name].append(variants[name]())
    return found


def _median(values: list[float]) -> tuple[float, Spread]:
    return statistics.median(values), spread_of(values)


def _client_cpu(run: Callable[[], float]) -> str:
    """How busy this process (the client) was during one run: a measured cause."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return (f"the client process used {cpu / wall:.0%} of one core over the run (its Python "
            f"threads share one GIL) on a machine of {os.cpu_count()} cores that also runs "
            "the Redis server(s)")


def _commandstats(client: redis_py.Redis) -> dict[str, dict[str, float]]:
    return {name.removeprefix("cmdstat_"): value
            for name, value in client.info("commandstats").items()}


def redis(quick: bool) -> None:
    if shutil.which("redis-server") is None:
        note("Redis suite not measured: redis-server is not installed")
        return
    n = 600 if quick else 3_000
    rounds = 3 if quick else 7
    with _server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        plain = RedisStore.from_url(url, prefix="bench-plain")
        leased = RedisStore.from_url(url, prefix="bench-lease", lease_calls=64)
        behind = RedisStore.from_url(url, prefix="bench-behind", lease_calls=64,
                                     durability="batched")
        pairs, lease_pairs, behind_pairs = _Pairs(plain), _Pairs(leased), _Pairs(behind)
        client = redis_py.Redis(port=port)
        floor_sha = client.script_load("return redis.call('HINCRBY', KEYS[1], 'n', 1)")

        def floor() -> float:
            began = time.perf_counter()
            for _ in range(n):
                client.evalsha(floor_sha, 1, "floor")
            return n / (time.perf_counter() - began)

        pairs.pair(0)
        lease_pairs.pair(0)
        behind_pairs.pair(0)
        variants: dict[str, Callable[[], float]] = {
            "1 thread": lambda: pairs.threads(n, 1),
            "8 threads": lambda: pairs.threads(n, 8),
            "8 tasks": lambda: pairs.tasks(n, 8),
            "8 threads, leases": lambda: lease_pairs.threads(n, 8),
            "8 tasks, leases": lambda: lease_pairs.tasks(n, 8),
            "8 threads, leases, batched settles": lambda: behind_pairs.threads(n, 8),
            "8 tasks, leases, batched settles": lambda: behind_pairs.tasks(n, 8),
            "floor": floor,
        }
        found = _rounds(variants, rounds)
        value, spread = _median(found.pop("floor"))
        report("redis: floor, one trivial EVALSHA a round trip, 1 thread", value, "calls/s",
               spread=spread)
        for name, values in found.items():
            value, spread = _median(values)
            goal = Goal.of(">=", 10_000) if name.startswith("8 ") else None
            report(f"redis: reserve+settle pairs, {name}", value, "pairs/s", goal, spread,
                   cause=lambda name=name: _client_cpu(variants[name]))

        # Server time and commands a pair, one thread, no lease (and with batching+leases).
        for name, run in [("1 thread", lambda: pairs.threads(n, 1)),
                          ("8 tasks, leases", lambda: lease_pairs.tasks(n, 8))]:
            client.config_resetstat()
            run()
            stats = _commandstats(client)
            script = stats.get("evalsha", {"usec": 0.0, "calls": 0})
            inner = [v for k, v in stats.items()
                     if k not in ("evalsha", "eval", "config|resetstat", "info")]
            inside = sum(v["calls"] for v in inner)
            inside_usec = sum(v["usec"] for v in inner)
            per_call = script["usec"] / max(script["calls"], 1)
            report(f"redis: server time a pair, {name} (INFO commandstats)",
                   script["usec"] / n, "us", Goal.of("<=", 40),
                   cause=lambda per_call=per_call, inside=inside, inner_usec=inside_usec,
                   script=script: (
                       f"{per_call:.0f} µs a script run, {inside / n:.1f} commands a pair "
                       f"inside them: the commands take {inner_usec / script['usec']:.0%} of "
                       "the scripts' time (INFO commandstats), the script's own Lua the rest"))
            report(f"redis: commands inside the scripts a pair, {name}", inside / n, "cmds")
            report(f"redis: script calls a pair, {name}", script["calls"] / n, "calls")
        # SLOWLOG: each script's own duration, one thread.
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", 4096)
        client.slowlog_reset()
        pairs.threads(min(n, 1000), 1)
        client.config_set("slowlog-log-slower-than", 10_000)
        by_script: dict[str, list[int]] = {"reserve": [], "commit": []}
        names = {plain._shas["reserve"]: "reserve", plain._shas["commit"]: "commit"}
        for entry in client.slowlog_get(4096):
            command = entry["command"].split()
            if command and command[0].upper() == b"EVALSHA":
                script_name = names.get(command[1].decode())
                if script_name:
                    by_script[script_name].append(int(entry["duration"]))
        for script_name, durations in by_script.items():
            if durations:
                report(f"redis: SLOWLOG median of the {script_name} script, 1 thread",
                       statistics.median(durations), "us")
        for store in (plain, leased, behind):
            store.clear()
            store.close()
        client.close()
        with _cluster() as cluster_url:
            if cluster_url is None:
                note("Redis Cluster not measured: .ci/redis-cluster could not start one")
                return
            single = _Pairs(RedisStore.from_url(url, prefix="bench-1k"), workspaces=1000)
            spread_out = _Pairs(RedisStore.from_url(cluster_url, prefix="bench-1k"),
                                workspaces=1000)
            single.pair(0)
            spread_out.pair(0)
            found = _rounds({"one node": lambda: single.tasks(n, 8),
                             "3 nodes": lambda: spread_out.tasks(n, 8)}, rounds)
            ratios = [c / s for c, s in zip(found["3 nodes"], found["one node"], strict=True)]
            for name, values in found.items():
                value, spread = _median(values)
                report(f"redis: 1,000 workspaces, 8 tasks, {name}", value, "pairs/s",
                       spread=spread)
            value, spread = _median(ratios)
            report("redis: 1,000 workspaces, 3-node Cluster / one node", value, "x",
                   Goal.of(">=", 2), spread,
                   cause=lambda: _client_cpu(lambda: spread_out.tasks(n, 8)))
            for store in (single.store, spread_out.store):
                store.clear()
                store.close()
