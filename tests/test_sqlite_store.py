"""SQLiteStore beyond the conformance suite: several processes, kill -9, schema, the manager."""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from store_helpers import T0, entry

from quota_hooks import Estimate, QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.errors import ConfigurationError, StorageError
from quota_hooks.storage import SQLiteStore, UsageDelta, UsageEntry, store_from_url
from quota_hooks.storage.sqlite import SCHEMA_VERSION
from quota_hooks.testing import ManualClock

ROOT = Path(__file__).resolve().parent.parent
MONTH = "2026-01"


def python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_four_processes_share_a_limit_exactly(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    SQLiteStore(db).close()  # create the schema once
    code = """
        import sys
        from quota_hooks.storage import SQLiteStore, Reservation
        from store_helpers import T0, one_request, rpm
        store = SQLiteStore(sys.argv[1])
        granted = sum(
            isinstance(store.reserve(["workspace:ws"], one_request(), rpm(1000), T0, "2026-01",
                                     300), Reservation)
            for _ in range(2500)
        )
        store.close()
        print(granted)
    """
    workers = [python(code, str(db)) for _ in range(4)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    granted = [int(out) for out, _ in outputs]
    assert sum(granted) == 1000  # 10,000 attempts from 4 processes, a limit of 1,000
    store = SQLiteStore(db)
    assert store.counters("workspace:ws", T0, MONTH).requests_minute == 1000
    store.close()


@pytest.mark.parametrize("durability", ["batched", "sync"])
def test_kill_9_mid_load_loses_no_acknowledged_record(tmp_path: Path, durability: str) -> None:
    db = tmp_path / "crash.db"
    code = """
        import sys
        from quota_hooks.storage import SQLiteStore
        from store_helpers import entry
        store = SQLiteStore(sys.argv[1], durability=sys.argv[2])
        done = 0
        while True:
            for _ in range(50):
                store.commit(entry(tokens=1))
                done += 1
            store.flush()  # acknowledged: every record so far is in the file
            print(done, flush=True)
    """
    writer = python(code, str(db), durability)
    assert writer.stdout is not None
    acknowledged = 0
    while acknowledged < 2000:
        line = writer.stdout.readline()
        assert line, writer.stderr.read() if writer.stderr else "writer died"
        acknowledged = int(line)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    store = SQLiteStore(db)
    kept = store.history_count()
    assert kept >= acknowledged
    # the counters agree with the history: no half-written batch
    assert store.counters("workspace:ws", T0, MONTH).cost_month_nanos == kept * 1_000_000
    store.close()


def test_schema_version_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    store = SQLiteStore(db)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="schema version 99, newer than"):
        SQLiteStore(db)


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    db = tmp_path / "keep.db"
    store = SQLiteStore(db)
    for _ in range(5):
        store.commit(entry(tokens=3))
    store.close()
    again = SQLiteStore(db)
    assert again.counters("workspace:ws", T0, MONTH).tokens_minute == 15
    assert len(again.recent("workspace:ws", 10)) == 5
    again.close()


def test_a_manager_on_sqlite(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    url = f"sqlite:///{tmp_path}/m.db"
    manager = QuotaManager.from_env({"QUOTA_HOOKS_STORE": url}, clock=clock)
    assert isinstance(manager.store, SQLiteStore)
    manager.record(UsageRecord(workspace_id="acme", model="gpt-4o-mini", input_tokens=100,
                               output_tokens=10))
    report = manager.status("acme")
    assert report.tokens_per_minute.current == 110
    assert report.enhanced_tracking is not None
    assert report.enhanced_tracking.recent_activity[0].model == "gpt-4o-mini"
    manager.close()
    # another manager on the same file sees it
    other = QuotaManager(QuotaPolicy(), store=store_from_url(url), clock=clock)
    assert other.status("acme").tokens_per_minute.current == 110
    other.close()


def test_bad_configuration_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="durability must be 'batched' or 'sync'"):
        SQLiteStore(tmp_path / "x.db", durability="eventually")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="batch_size must be a whole number >= 1"):
        SQLiteStore(tmp_path / "x.db", batch_size=0)
    with pytest.raises(ConfigurationError, match="QUOTA_HOOKS_STORE"):
        QuotaManager.from_env({"QUOTA_HOOKS_STORE": "sqlite://nope"})


def test_an_unwritable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match="opening SQLite store"):
        SQLiteStore(tmp_path / "file" / "q.db")


def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.commit(entry())
    for read in (store.history_count, store.schema_version,
                 lambda: store.counters("workspace:ws", T0, MONTH)):
        with pytest.raises(StorageError, match="closed"):
            read()


def test_an_unwritable_record_is_dropped_alone_and_nothing_hangs(tmp_path: Path) -> None:
    """A value SQLite can never bind (a cost past 2**63 nano-dollars, which only a store-level
    caller can produce) costs that one record, counted; its batch neighbours are written and
    flush/status/close all return."""
    store = SQLiteStore(tmp_path / "bad.db", batch_size=50)
    huge = entry(ws="huge")
    huge = UsageEntry(huge.record, huge.scopes,
                      UsageDelta(requests=1, cost_nanos=2**64, calls=1), T0, MONTH)
    for i in range(40):
        store.commit(huge if i == 20 else entry(tokens=1))
    assert store.flush(timeout=30)
    assert store.dropped_records == 1
    assert store.counters("workspace:ws", T0, MONTH).tokens_minute == 39
    assert store.history_count() == 39
    store.commit(entry(tokens=1))  # the writer is still alive
    assert store.counters("workspace:ws", T0, MONTH).tokens_minute == 40
    store.close()


def test_a_lone_surrogate_in_a_name_is_stored_escaped(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    manager = QuotaManager(QuotaPolicy(rpm=10), store=SQLiteStore(tmp_path / "s.db"),
                           clock=clock)
    odd = "team-\udcff"  # what os.fsdecode gives for the byte 0xff
    manager.record(UsageRecord(workspace_id=odd, model="m\ud800", input_tokens=5,
                               scopes={"user": "u\udc80"}, tags=("t\udc81",)))
    report = manager.status(odd)
    assert report.tokens_per_minute.current == 5
    assert manager.tracking_errors == 0
    assert manager.store.counters("user:u\\udc80", clock(), "2026-01").tokens_minute == 5
    assert manager.acquire(odd, Estimate(model="m", input_tokens=1)) is not None
    assert manager.store.dropped_records == 0  # type: ignore[attr-defined]
    manager.close()


def test_flush_waits_for_its_own_records_not_for_later_ones(tmp_path: Path) -> None:
    """flush() waits for what was committed before it: a steady stream of new records from
    other threads never starves a reader (Queue.join() would wait for all of them)."""
    store = SQLiteStore(tmp_path / "busy.db", batch_size=100, queue_size=500)
    stop = threading.Event()
    written = [0]

    def producer() -> None:
        while not stop.is_set():
            store.commit(entry(tokens=1))
            written[0] += 1

    threads = [threading.Thread(target=producer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        reads = 0
        deadline = time.monotonic() + 120
        while reads < 20 and time.monotonic() < deadline:
            store.commit(entry(ws="mine", tokens=1))
            # each read must see this thread's records however busy the writer is
            assert store.counters("workspace:mine", T0, MONTH).tokens_minute == reads + 1
            reads += 1
        assert reads == 20
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert written[0] > 0
    store.close()


def test_connections_of_finished_threads_are_closed(tmp_path: Path) -> None:
    db = tmp_path / "fd.db"
    store = SQLiteStore(db)
    store.commit(entry())

    def open_files() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir()
                   if os.path.realpath(fd).startswith(str(db)))

    before = open_files()
    for _ in range(30):
        t = threading.Thread(target=lambda: store.counters("workspace:ws", T0, MONTH))
        t.start()
        t.join()
    gc.collect()
    assert open_files() <= before + 3  # not 30 more connections (each holds db + wal + shm)
    store.close()
    assert open_files() == 0


def test_a_schema_3_file_is_migrated_in_place_and_keeps_its_usage(tmp_path: Path) -> None:
    """A file written before the control plane (schema 3): opened, it gains the policy and
    alert tables and the token-mix columns, and keeps what it held."""
    from quota_hooks.storage.sqlite import MIGRATIONS

    db = tmp_path / "v3.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for step in (1, 2, 3):
        for statement in MIGRATIONS[step]:
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    conn.execute("INSERT INTO breakdowns (scope, month, by_kind, name, requests, tokens, "
                 "input_tokens) VALUES ('workspace:ws', ?, 'model', 'gpt-4o-mini', 2, 20, 20)",
                 (MONTH,))
    conn.commit()
    conn.close()
    store = SQLiteStore(db)
    assert store.schema_version() == SCHEMA_VERSION == 4
    store.commit(entry(tokens=5))
    row = store.breakdown("workspace:ws", MONTH, "model")["gpt-4o-mini"]
    assert (row.requests, row.input_tokens, row.cached_input_tokens) == (3, 25, 0)
    assert store.put_policies({"*": "{}"}, T0) == 1
    store.close()


def test_a_store_closed_under_its_manager_raises_never_crashes(tmp_path: Path) -> None:
    """A SQLiteStore closed while its manager still runs (its policy refresh reads from a
    thread of its own) once closed that thread's connection under its query: the process
    died of SIGSEGV. close() now waits for the operations under way; later ones raise
    StorageError. Run in a child process, so that a crash fails this test."""
    script = textwrap.dedent(f"""
        import logging
        from quota_hooks import Estimate, QuotaManager, QuotaPolicy, UsageRecord
        from quota_hooks.errors import QuotaHooksError
        from quota_hooks.storage import SQLiteStore
        from quota_hooks.testing import ManualClock
        logging.disable(logging.CRITICAL)
        one = Estimate(model="gpt-4o-mini", input_tokens=1)
        for i in range(150):
            store = SQLiteStore({str(tmp_path)!r} + f"/{{i}}.db", durability="sync")
            m = QuotaManager(QuotaPolicy(rpm=20, rpd=60), store=store,
                             clock=ManualClock(1_767_225_610.0))
            for _ in range(3):
                m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1),
                         m.acquire("ws", one, wait=False))
            m.status("ws", enhanced=False)
            store.close()
            try:
                m.status("ws", enhanced=False)
                raise SystemExit("a closed store answered")
            except QuotaHooksError:
                pass
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_a_sync_commit_that_meets_a_locked_file_is_written_later_not_lost(
    tmp_path: Path,
) -> None:
    """Another process's long write transaction outlasts lock_timeout: the sync store's
    commits go to a writer thread that waits for the file, instead of being lost; sync writes
    resume once it has caught up."""
    path = tmp_path / "quota.db"
    store = SQLiteStore(path, durability="sync", lock_timeout=0.2)
    manager = QuotaManager(QuotaPolicy(rpm=100, rpd=None, tpm=None, tpd=None, mode="raise"),
                           store=store)
    manager.record(UsageRecord(workspace_id="ws", input_tokens=1))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process, as SQLite sees it
    release = threading.Timer(1.0, lambda: other.execute("COMMIT"))
    release.start()
    try:
        for tokens in (10, 20):
            manager.record(UsageRecord(workspace_id="ws", input_tokens=tokens))
        assert store.dropped_records == 0
    finally:
        release.join()
        other.close()
    assert store.flush(10)
    manager.record(UsageRecord(workspace_id="ws", input_tokens=300))  # sync again
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM history").fetchone() == (4,)
    status = manager.status("ws", enhanced=False)
    assert status.requests_per_minute.current == 4
    assert status.tokens_per_day.current == 331
    assert store.health() is None
    store.close()


def test_a_writer_stuck_behind_another_process_keeps_one_caller_waiting_not_each(
    tmp_path: Path,
) -> None:
    """Another process holds the file: the first caller waits lock_timeout for the writer
    (then fails open); later callers see the writer stuck where it was and go on at once, and
    health() says why (the status is degraded)."""
    path = tmp_path / "quota.db"
    store = SQLiteStore(path, lock_timeout=1.0)
    manager = QuotaManager(QuotaPolicy(rpm=100, rpd=None, tpm=None, tpd=None, mode="raise"),
                           store=store)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        manager.record(UsageRecord(workspace_id="ws", input_tokens=1))  # queued: the writer waits
        manager.acquire("ws", Estimate(input_tokens=1, output_tokens=1))  # waits, fails open
        assert "writer waiting for the file" in (store.health() or "")
        started = time.monotonic()
        for _ in range(3):
            manager.acquire("ws", Estimate(input_tokens=1, output_tokens=1))
        assert time.monotonic() - started < 1.0  # no second lock_timeout, let alone three
        assert manager.fail_open_calls == 4
    finally:
        other.execute("COMMIT")
        other.close()
    assert store.flush(10)
    assert manager.status("ws", enhanced=False).tokens_per_day.current == 1
    assert store.health() is None
    store.close()
