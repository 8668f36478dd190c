"""A store and a manager made before ``fork()`` (gunicorn --preload, Celery's prefork pool,
multiprocessing's fork start method) keep working in the child: its records are written by a
writer of its own (none lost, none written twice), its alerts are sent by a thread of its
own, and the parent's queued records stay the parent's. Over real forks."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_helpers import dispose, make_store

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.storage import SQLiteStore, Store
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
