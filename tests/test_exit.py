"""Nothing lost at a plain exit: a script that records and simply ends (no ``close()``) still
writes its SQLite records, closes the default manager and sends its queued alerts; what a
hung sink cannot take in time is logged as lost, and the exit stays bounded."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}


def run(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path,
                          env={**ENV, **env}, capture_output=True, text=True, timeout=60)


def rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM history").fetchone()[0])


def test_sqlite_records_survive_a_plain_exit(tmp_path: Path) -> None:
    """The issue's measurement: 500 records on SQLite, no close(): 0 rows before."""
    done = run("""
        from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
        from quota_hooks.storage import SQLiteStore
        m = QuotaManager(QuotaPolicy.unlimited(), store=SQLiteStore("quota.db"))
        for _ in range(500):
            m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=3))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert rows(tmp_path / "quota.db") == 500


def test_the_default_manager_closes_at_exit(tmp_path: Path) -> None:
    done = run("""
        from quota_hooks import UsageRecord, get_default_manager
        m = get_default_manager()
        for _ in range(50):
            m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=3))
    """, tmp_path, QUOTA_HOOKS_STORE="sqlite:///default.db")
    assert done.returncode == 0, done.stderr
    assert rows(tmp_path / "default.db") == 50


def test_queued_alerts_are_sent_at_exit(tmp_path: Path) -> None:
    done = run("""
        import time
        from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord

        def slow_sink(alert):
            time.sleep(0.3)  # still sending when the script ends
            with open("alerts.txt", "a") as out:
                out.write(alert.kind.value + "\\n")

        m = QuotaManager(QuotaPolicy(rpm=10, mode="observe"), sinks=[slow_sink])
        for _ in range(10):  # 80 %, 95 %, 100 %: warning, critical, rate limited
            m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=3))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    sent = (tmp_path / "alerts.txt").read_text().split()
    assert "warning" in sent and "critical" in sent


def test_a_hung_sink_is_logged_as_lost_and_the_exit_is_bounded(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run("""
        import threading
        from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
        from quota_hooks.storage import SQLiteStore

        def hung_sink(alert):
            threading.Event().wait()  # never returns

        m = QuotaManager(QuotaPolicy(rpm=10, mode="observe"), sinks=[hung_sink],
                         store=SQLiteStore("quota.db"), sink_timeout=600)
        for _ in range(10):
            m.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=3))
    """, tmp_path)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "were not delivered within" in done.stderr and "are lost" in done.stderr
    assert took < 15, took  # EXIT_TIMEOUT (5 s) plus the interpreter's start
    assert rows(tmp_path / "quota.db") == 10  # the records still made it
