"""SQLiteStore beyond the conformance suite: several processes, kill -9, schema, the manager."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from store_helpers import T0, entry

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.errors import ConfigurationError, StorageError
from quota_hooks.storage import SQLiteStore, store_from_url
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
