"""Shared helpers of the store tests (and of the processes they start)."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from quota_hooks.pricing import to_nanos
from quota_hooks.storage import (
    Limits,
    MemoryStore,
    SQLiteStore,
    Store,
    UsageDelta,
    UsageEntry,
    workspace_scope,
)
from quota_hooks.storage.base import as_async
from quota_hooks.usage import UsageRecord
from quota_hooks.windows import month_key

REDIS_ENV = "QUOTA_HOOKS_TEST_REDIS_URL"
CLUSTER_ENV = "QUOTA_HOOKS_TEST_REDIS_CLUSTER_URL"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def entry(
    ws: str = "ws",
    now: float = T0,
    *,
    tokens: int = 10,
    cost: str = "0.001",
    model: str = "gpt-4o-mini",
    method: str = "chat.completions",
    success: bool = True,
    status: int | None = 200,
    extra_scopes: tuple[str, ...] = (),
) -> UsageEntry:
    record = UsageRecord(workspace_id=ws, model=model, api_method=method,
                         input_tokens=tokens, success=success, status_code=status)
    nanos = to_nanos(Decimal(cost))
    limited = status == 429
    delta = UsageDelta(requests=1, tokens=tokens, cost_nanos=nanos, calls=1,
                       errors=0 if success or limited else 1, rate_limited=int(limited))
    return UsageEntry(record, (workspace_scope(ws), *extra_scopes), delta, now, month_key(now),
                      Decimal(cost), "test")


def one_request(tokens: int = 0) -> UsageDelta:
    return UsageDelta(requests=1, tokens=tokens)


def rpm(limit: int, scope: str = "workspace:ws") -> dict[str, Limits]:
    return {scope: Limits(rpm=limit)}


def redis_url() -> str | None:
    """The Redis of the tests: $QUOTA_HOOKS_TEST_REDIS_URL, else 127.0.0.1:6379 if it answers.

    In CI (``CI`` set) a missing Redis is a failure, never a skip."""
    url = os.environ.get(REDIS_ENV)
    if url:
        return url
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return "redis://127.0.0.1:6379/15"
    except OSError:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Redis server: set {REDIS_ENV} (.ci/run starts one)")
        return None


def redis_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def redis_cluster_url() -> str | None:
    """The Redis Cluster of the tests: $QUOTA_HOOKS_TEST_REDIS_CLUSTER_URL
    (``redis+cluster://host:port,...``; ``.ci/run`` starts a 3-node one with
    ``.ci/redis-cluster``). In CI a missing cluster is a failure, never a skip."""
    url = os.environ.get(CLUSTER_ENV)
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"CI needs a Redis Cluster: set {CLUSTER_ENV} (.ci/run starts one)")
    return None


BACKENDS = ["memory", "sqlite", "redis", "redis-cluster", "redis-batched"]


def make_store(kind: str, tmp_path: Path) -> Store:
    """A fresh store of one backend (Redis: its own key prefix, the injected clock's time)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "quota.db")
    if kind == "redis-cluster":
        url = redis_cluster_url()
        if url is None:
            pytest.skip(f"no Redis Cluster (CI starts one; set {CLUSTER_ENV})")
    else:
        url = redis_url()
        if url is None:
            pytest.skip("no Redis server on 127.0.0.1:6379 (CI starts one; set "
                        f"{REDIS_ENV} to use another)")
    from quota_hooks.storage.redis import RedisStore

    # Tests that fire thousands of concurrent calls at one event loop measure exactness, not
    # timeouts: give replies and the pool room to wait their turn.
    patient = url + ("&" if "?" in url else "?") + (
        "socket_timeout=10&socket_connect_timeout=10&timeout=30")
    return RedisStore.from_url(patient, prefix=f"qh-test-{uuid.uuid4().hex[:8]}",
                               use_server_time=False,
                               durability="batched" if kind == "redis-batched" else "sync")


def run_processes(code: str, url: str, prefix: str, n: int) -> list[int]:
    """Run ``code`` (dedented; argv: the store URL and prefix) in ``n`` processes at once, and
    return the number each prints."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"}
    workers = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), url, prefix], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    return [int(out) for out, _ in outputs]


def redis_store_at(url: str) -> Iterator[Any]:
    """A RedisStore on ``url`` with a key prefix of its own and the injected clock's time,
    cleared and closed afterwards (a fixture's body: ``yield from redis_store_at(url)``)."""
    from quota_hooks.storage.redis import RedisStore

    backend = RedisStore.from_url(url, prefix=f"qh-test-{uuid.uuid4().hex[:8]}",
                                  use_server_time=False)
    yield backend
    backend.clear()
    backend.close()


def dispose(store: Store) -> None:
    """Delete a test store's keys (Redis) and close it."""
    clear = getattr(store, "clear", None)
    if clear is not None:
        clear()
    store.close()


class Ops:
    """A store under test, driven through its sync face (``mode="sync"``) or through its async
    face (:func:`~quota_hooks.storage.base.as_async`) on one event loop (``mode="async"``),
    with the same calls: ``ops.commit(...)`` is ``store.commit(...)`` or
    ``await as_async(store).acommit(...)``. Methods outside the protocols (``health``,
    ``flush`` ...) are the store's own."""

    def __init__(self, store: Store, portal: Any = None) -> None:
        self.store = store
        self.mode = "sync" if portal is None else "async"
        self.portal = portal
        self.astore = as_async(store)

    def __getattr__(self, name: str) -> Any:
        if self.portal is None or not hasattr(self.astore, "a" + name):
            return getattr(self.store, name)
        method = getattr(self.astore, "a" + name)
        portal = self.portal

        def call(*args: Any, **kwargs: Any) -> Any:
            return portal.call(functools.partial(method, *args, **kwargs))

        return call
