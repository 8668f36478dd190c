"""A store and a manager made before ``fork()`` (gunicorn --preload, Celery's prefork pool,
multiprocessing's fork start method) keep working in the child: its records are written by a
writer of its own (none lost, none written twice), its alerts are sent by a thread of its
own, and the parent's queued records stay the parent's. Over real forks."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_helpers import dispose, make_store

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.storage import MemoryStore, SQLiteStore, Store
from quota_hooks.usage import Estimate

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")

EST = Estimate(model="gpt-4o-mini", input_tokens=10, output_tokens=10)


def call(manager: QuotaManager, tokens: int) -> None:
    reservation = manager.acquire("ws", EST)
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=tokens,
                               output_tokens=0), reservation)


@pytest.fixture(params=["sqlite", "redis", "redis-batched"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend = make_store(request.param, tmp_path)
    yield backend
    dispose(backend)


def _child(manager: QuotaManager) -> None:
    for tokens in (100, 200, 300):
        call(manager, tokens)
    # No flush, no close: a multiprocessing child leaves through os._exit.


def test_a_multiprocessing_child_loses_no_record_and_sends_its_own_alerts(
    store: Store, tmp_path: Path
) -> None:
    sent = tmp_path / "alerts.jsonl"

    def sink(alert: Any) -> None:
        with sent.open("a") as out:
            out.write(json.dumps({"pid": os.getpid(), "kind": alert.kind.value}) + "\n")

    manager = QuotaManager(QuotaPolicy(rpm=8, rpd=None, tpm=None, tpd=None, mode="raise",
                                       warning_percent=40, critical_percent=99),
                           store=store, sinks=[sink])
    call(manager, 1)  # the parent's writer and alert thread run before the fork
    assert manager.drain()
    child = multiprocessing.get_context("fork").Process(target=_child, args=(manager,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    flush = getattr(store, "flush", None)
    if flush is not None:
        assert flush(10)
    status = manager.status("ws", enhanced=False)
    assert status.requests_per_minute.current == 4
    assert status.tokens_per_day.current == 601  # the child's real tokens, not its holds
    kinds = [json.loads(line) for line in sent.read_text().splitlines()]
    assert {"pid": child.pid, "kind": "warning"} in kinds  # 4 of 8: sent from the child


def test_a_bare_fork_child_writes_through_its_own_writer(store: Store) -> None:
    manager = QuotaManager(QuotaPolicy(rpm=100, rpd=None, tpm=None, tpd=None, mode="raise"),
                           store=store)
    call(manager, 1)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            _child(manager)
            flush = getattr(store, "flush", None)
            code = 0 if flush is None or flush(10) else 2
        finally:
            os._exit(code)
    call(manager, 4)  # the parent goes on with its own writer, while the child writes
    _, status_code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status_code) == 0
    call(manager, 5)
    flush = getattr(store, "flush", None)
    if flush is not None:
        assert flush(10)
    status = manager.status("ws", enhanced=False)
    assert status.requests_per_minute.current == 6
    assert status.tokens_per_day.current == 610
    if isinstance(store, SQLiteStore):  # the child closed its copies of the parent's files
        with sqlite3.connect(store.path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("SELECT count(*) FROM history").fetchone() == (6,)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite-sync"])
def test_a_fork_while_another_thread_uses_the_store(kind: str, tmp_path: Path) -> None:
    """Another thread records and reads without pause while the main thread forks: no child
    inherits a lock (or a SQLite connection) in use that it then waits on forever, and the
    parent's file stays whole."""
    store: Store = (MemoryStore() if kind == "memory" else SQLiteStore(
        tmp_path / "quota.db", durability="sync" if kind == "sqlite-sync" else "batched"))
    manager = QuotaManager(QuotaPolicy(rpm=10**6, rpd=None, tpm=None, tpd=None, mode="raise"),
                           store=store)
    stop = threading.Event()
    made = [0]

    def busy() -> None:
        while not stop.is_set():
            call(manager, 1)
            manager.status("ws", enhanced=False)
            made[0] += 1

    worker = threading.Thread(target=busy)
    worker.start()
    children = []
    try:
        for _ in range(3):
            time.sleep(0.05)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.alarm(20)  # a hung child is killed, and fails the test
                    call(manager, 7)
                    flush = getattr(store, "flush", None)
                    code = 0 if flush is None or flush(10) else 2
                finally:
                    os._exit(code)
            children.append(pid)
    finally:
        stop.set()
        worker.join()
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert codes == [0, 0, 0]
    flush = getattr(store, "flush", None)
    if flush is not None:
        assert flush(10)
    status = manager.status("ws", enhanced=False)
    if kind == "memory":  # each process counts on its own
        assert status.tokens_per_day.current == made[0]
    else:
        assert status.tokens_per_day.current == made[0] + 3 * 7
        with sqlite3.connect(tmp_path / "quota.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.close()
