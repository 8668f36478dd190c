"""The ``quota-hooks`` command's edges: --version, a closed pipe, Ctrl-C, Rich markup,
``report --since`` at hours and minutes, a bad price file, a workspace without usage."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_helpers import redis_url

import quota_hooks
from quota_hooks.cli import main

CLI = [sys.executable, "-m", "quota_hooks.cli"]


def env(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_HOOKS_")}
    environ.update(extra)
    return environ


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"quota-hooks {quota_hooks.__version__}\n"
    done = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "quota-hooks 0.1.0"


@pytest.mark.parametrize("args", [["prices"], ["prices", "gpt-4o"], ["--help"]])
def test_a_closed_pipe_ends_quietly(args: list[str]) -> None:
    """`quota-hooks prices | head -2`: the reader is gone before the command writes."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has even imported quota_hooks
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == ""
    assert proc.returncode in (0, 141)  # 0 when argparse's --help exits first


@pytest.mark.skipif(shutil.which("sh") is None and not os.environ.get("CI"),
                    reason="needs a shell (CI has one: there, a missing one fails)")
def test_prices_piped_into_head() -> None:
    done = subprocess.run(f"{sys.executable} -m quota_hooks.cli prices | head -2", shell=True,
                          capture_output=True, text=True, timeout=60, env=env())
    assert len(done.stdout.splitlines()) == 2 and done.stderr == ""


def test_ctrl_c_ends_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.Popen([*CLI, "demo", "--store", "memory://", "--plain", "--pace", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env())
    assert proc.stdout is not None
    while "openai  sync   chat.completions" not in proc.stdout.readline():
        pass  # the traffic has begun
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "quota-hooks: interrupted" in err, err


def test_the_live_view_renders_markup_never_prints_it() -> None:
    """Whatever the console (a terminal, a pipe, `script`), a style is applied or dropped,
    never shown as `[green]...[/]`."""
    from rich.console import Console

    from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
    from quota_hooks.cli import _LiveView

    manager = QuotaManager(QuotaPolicy(rpm=10))
    manager.record(UsageRecord(workspace_id="demo", model="gpt-4o", input_tokens=10))
    for terminal in (True, False):
        buffer = io.StringIO()
        view = _LiveView("demo", console=Console(file=buffer, force_terminal=terminal,
                                                 width=100))
        view.watch(manager)
        view.live.start()
        view.say("  [rate_limited] a line with [brackets] of its own")
        view.stop()
        text = buffer.getvalue()
        assert "[green]" not in text and "[/]" not in text
        assert "[rate_limited] a line with [brackets] of its own" in text  # printed as is
        assert "10.0" in text and "status: normal" in text


@pytest.mark.skipif(shutil.which("script") is None and not os.environ.get("CI"),
                    reason="needs script(1) (CI has it: there, a missing one fails)")
def test_the_live_view_under_script(tmp_path: Path) -> None:
    command = (f"{sys.executable} -m quota_hooks.cli demo --store memory:// ")
    done = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=env(TERM="xterm"))
    assert done.returncode == 0, done.stdout[-2000:]
    for tag in ("[green]", "[yellow]", "[red]", "[/]"):
        assert tag not in done.stdout
    assert "status: rate_limited" in done.stdout and "refused after 3 calls" in done.stdout


# ---------------------------------------------------------------------- report --since
@pytest.fixture
def hours(tmp_path: Path) -> str:
    """A SQLite store with a call 3 hours ago, one 40 minutes ago and one now."""
    from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
    from quota_hooks.storage import SQLiteStore

    now = time.time()
    manager = QuotaManager(QuotaPolicy(), store=SQLiteStore(tmp_path / "usage.db"))
    for ago, model in ((3 * 3600, "gpt-4o"), (40 * 60, "gpt-4o-mini"), (0, "gpt-4.1-mini")):
        manager.clock = lambda ago=ago: now - ago  # type: ignore[misc]
        manager.record(UsageRecord(workspace_id="acme", model=model, input_tokens=1000,
                                   output_tokens=100))
    manager.close()
    return f"sqlite:///{tmp_path / 'usage.db'}"


def rows(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, float]]:
    assert main(["report", "--format", "json", *args]) == 0
    return {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}


def test_report_since_hours_and_minutes(hours: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert set(rows(capsys, "--since", "4h", "--store", hours)) == {
        "gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"}
    assert set(rows(capsys, "--since", "1h", "--store", hours)) == {"gpt-4o-mini",
                                                                    "gpt-4.1-mini"}
    assert set(rows(capsys, "--since", "30m", "--store", hours)) == {"gpt-4.1-mini"}
    assert set(rows(capsys, "--since", "30m", "--by", "workspace", "--store", hours)) == {
        "acme"}
    by_method = rows(capsys, "--since", "1h", "--by", "method", "--store", hours)
    assert by_method["chat.completions"]["requests"] == 2
    assert main(["report", "--since", "90m", "--store", hours]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("usage since 90m (20")
    assert "from each record" in out and "gpt-4o-mini" in out and "gpt-4o " not in out


def test_report_from_records_matches_the_totals(hours: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Over the whole history, the records and the month totals give the same table."""
    from quota_hooks import QuotaManager, QuotaPolicy
    from quota_hooks.storage import SQLiteStore

    exact = rows(capsys, "--since", "400d", "--store", hours)
    manager = QuotaManager(QuotaPolicy(), store=SQLiteStore(hours[len("sqlite:///"):]))
    history = manager.history("acme", since=manager.now() - 400 * 86_400, by="model")
    manager.close()
    assert {name: (r["requests"], r["tokens"], r["cost_usd"]) for name, r in exact.items()} == {
        name: (h.request_count, h.tokens_used, round(h.cost_usd or 0.0, 6))
        for name, h in history.rows.items()}


def test_report_refuses_hours_from_a_store_of_totals(capsys: pytest.CaptureFixture[str]) -> None:
    url = redis_url()
    if url is None:
        pytest.skip("no Redis (set QUOTA_HOOKS_TEST_REDIS_URL)")
    import redis

    from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
    from quota_hooks.storage import store_from_url

    url = url.rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(url).flushdb()
    manager = QuotaManager(QuotaPolicy(), store=store_from_url(url))
    manager.record(UsageRecord(workspace_id="acme", model="gpt-4o", input_tokens=10))
    manager.close()
    for since in ("1h", "90m", "2026-12-01T10:00:00Z"):
        assert main(["report", "--since", since, "--store", url]) == 2
        err = capsys.readouterr().err
        assert f"--since {since}: RedisStore" in err and "cannot start a report at an hour" in err
    assert main(["report", "--since", "2d", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "whole months" in out and "gpt-4o" in out
    assert main(["report", "--since", "2d", "--by", "day", "--store", url]) == 0
    assert "whole days from" in capsys.readouterr().out


# ---------------------------------------------------------------------- prices, status
@pytest.mark.parametrize("content", ["{bad", "[]", '{"gpt-4o": {"input": "abc"}}'])
@pytest.mark.parametrize("args", [["prices"], ["prices", "gpt-4o"]])
def test_prices_with_a_bad_price_file(tmp_path: Path, content: str, args: list[str]) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text(content)
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env=env(QUOTA_HOOKS_PRICES_FILE=str(bad)))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"quota-hooks prices: QUOTA_HOOKS_PRICES_FILE='{bad}': ")
    assert done.stdout == ""


def test_status_of_a_workspace_without_usage(hours: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "acmee", "--store", hours]) == 2
    err = capsys.readouterr().err
    assert "workspace 'acmee' has no usage in SQLiteStore(" in err
    assert "workspaces with usage: 'acme'" in err
    assert main(["status", "acmee", "--json", "--store", hours]) == 2
    assert main(["status", "acme", "--store", hours]) == 0
    out = capsys.readouterr().out
    assert out.startswith("workspace 'acme': normal (alert level none)")
    assert "why: every limit is under the 80% warning threshold" in out
