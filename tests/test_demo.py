"""``quota-hooks demo`` (and so ``make demo``): every run tells the same story.

Each test runs the demo as a user does, in a subprocess, offline, in a temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from store_helpers import redis_url

REFUSAL = ("refused after 3 calls, before sending: workspace:demo-small-budget: the monthly "
           "budget of $0.01 has no room for this call")


def run(cwd: Path, *args: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "QUOTA_HOOKS_STORE"}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "quota_hooks.cli", "demo", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=environ)


def assert_the_story(out: str) -> None:
    """Traffic through all three adapters, a refusal, alerts, the summary and next steps."""
    for line in ("openai  sync   chat.completions", "litellm sync   completion",
                 "langchain batch  chain x2", REFUSAL, "summary of workspace 'demo':",
                 "refusals: 1 ", "alerts: 2", "[rate_limited] Workspace 'demo' got a 429",
                 "[warning] Workspace 'demo-small-budget' reached 80%",
                 "status of 'demo': rate_limited, alert level none",
                 "why: a provider answered 429", "alert level none: the most used limit is"):
        assert line in out, line
    tail = out.rstrip().splitlines()[-3:]
    assert tail[0] == "next:"
    assert tail[1].startswith("  quota-hooks demo --serve")
    assert tail[2].startswith("  quota-hooks report")


def summary(out: str) -> str:
    """The summary table, which must not change from one run to the next."""
    return out[out.index("summary of workspace"):out.index("alerts:")]


def test_the_demo_runs_twice_in_a_row_with_the_same_story(tmp_path: Path) -> None:
    first, second = run(tmp_path), run(tmp_path)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in first.stderr + second.stderr
    assert_the_story(first.stdout)
    assert_the_story(second.stdout)
    out = first.stdout  # the default store: sqlite:///quota.db in the working directory
    assert (tmp_path / "quota.db").exists()
    assert out.splitlines()[0] == ("store: sqlite:///quota.db (fresh for this run; kept "
                                   "afterwards for quota-hooks report)")
    # gpt-4o, 640 + 180 tokens = $0.00276 a call: the 4th no longer fits a $0.01 budget
    assert f"{REFUSAL} ($0.00828 spent or held this month)" in out
    for line in ("openai  sync   chat stream", "litellm async  acompletion",
                 "langchain stream chat",
                 "why: a provider answered 429 (rate limited) to 2 call(s) in the last minute"):
        assert line in out, line
    assert "{" not in out  # the summary, not the JSON dump
    assert second.stdout.splitlines()[0] == (
        "store: sqlite:///quota.db (fresh for this run: the previous demo run's usage there "
        "was removed; this one's is kept for quota-hooks report)")
    assert summary(first.stdout) == summary(second.stdout)
    # The next-step command reads what the demo left.
    report = subprocess.run([sys.executable, "-m", "quota_hooks.cli", "report", "--since", "1h",
                             "--format", "json"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env={k: v for k, v in os.environ.items()
                                               if k != "QUOTA_HOOKS_STORE"})
    assert report.returncode == 0, report.stderr
    rows = {r["name"]: r for r in json.loads(report.stdout)["rows"]}
    assert rows["gpt-4o-2024-08-06"]["requests"] == 1 + 3  # the stream, and the small budget's


def test_the_demo_honours_quota_hooks_store(tmp_path: Path) -> None:
    env = {"QUOTA_HOOKS_STORE": f"sqlite:///{tmp_path / 'mine.db'}"}
    done = run(tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert REFUSAL in done.stdout
    assert (tmp_path / "mine.db").exists() and not (tmp_path / "quota.db").exists()
    # `quota-hooks report` reads the same variable: the next step needs no --store.
    assert done.stdout.rstrip().splitlines()[-1].startswith("  quota-hooks report   #")
    explicit = run(tmp_path, "--store", f"sqlite:///{tmp_path / 'other.db'}", env=env)
    assert explicit.returncode == 0 and (tmp_path / "other.db").exists()  # --store wins
    assert f"quota-hooks report --store sqlite:///{tmp_path / 'other.db'}" in explicit.stdout


def test_the_demo_never_empties_a_store_with_other_usage(tmp_path: Path) -> None:
    from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
    from quota_hooks.storage import SQLiteStore

    manager = QuotaManager(QuotaPolicy(), store=SQLiteStore(tmp_path / "quota.db"))
    manager.record(UsageRecord(workspace_id="acme", model="gpt-4o", input_tokens=10))
    manager.close()
    done = run(tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("quota-hooks demo: --store: sqlite:///quota.db holds usage "
                                  "of other workspaces ('acme')")
    after = SQLiteStore(tmp_path / "quota.db")
    assert after.workspaces() == ["acme"]
    after.close()
    done = run(tmp_path, env={"QUOTA_HOOKS_STORE": "sqlite:///quota.db"})
    assert done.returncode == 2 and "QUOTA_HOOKS_STORE: " in done.stderr  # names its source


def test_the_demo_json_is_the_status_dump_alone(tmp_path: Path) -> None:
    """``--json --store memory://``: the enhanced status JSON alone on stdout (the traffic
    log on stderr), of this run's calls only, and no file written."""
    done = run(tmp_path, "--json", "--store", "memory://")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("store: memory:// (fresh")
    assert not (tmp_path / "quota.db").exists()
    report = json.loads(done.stdout)
    assert "enhanced_tracking" in report and "forecast" in report
    assert REFUSAL in done.stderr  # the traffic log, out of the way
    assert report["workspace_id"] == "demo"
    assert report["status"] == "rate_limited"  # the demo's 429
    # OpenAI: 8 calls reached the fake, 7 metered (models.list is exempt), 2 of them the 429
    # and its retry. LiteLLM: 2 calls to the loopback fake, one to Claude (mocked) and one
    # mocked 429. LangChain: a batch of two chains and one stream, counted once each (by the
    # handler, not twice). The store was emptied first: this run's calls only.
    assert report["requests_per_minute"]["current"] == 7 + 4 + 3
    models = report["enhanced_tracking"]["models_breakdown"]
    claude = models["claude-sonnet-4-5"]  # another provider, priced at its own rates
    assert claude["request_count"] == 1 and claude["cost_usd"] > 0
    methods = report["enhanced_tracking"]["api_methods_breakdown"]
    assert methods["chat.completions"] == {
        "request_count": 5 + 4 + 3, "error_count": 1 + 1,
        "tokens_used": (4 + 2 + 3) * 820 + claude["tokens_used"],
        # per 1M: gpt-4o-mini 7 x (128 x 0.15 + 512 x 0.075 + 180 x 0.60)
        #  + gpt-4o (128 x 2.50 + 512 x 1.25 + 180 x 10) + gpt-4.1-mini (128 x 0.40 + 512 x 0.10
        #  + 180 x 1.60), and Claude's own
        "cost_usd": pytest.approx(0.0043096 + claude["cost_usd"], abs=1e-12),
        "unpriced_count": 0, "unpriced_charge_usd": 0.0,
    }
    assert methods["models"]["request_count"] == 1


def test_the_demo_reruns_on_redis(tmp_path: Path) -> None:
    url = redis_url()
    if url is None:
        pytest.skip("no Redis (set QUOTA_HOOKS_TEST_REDIS_URL)")
    import redis

    url = url.rsplit("/", 1)[0] + "/13"  # a database of its own, emptied first
    redis.Redis.from_url(url).flushdb()
    for _ in range(2):
        done = run(tmp_path, "--store", url)
        assert done.returncode == 0, done.stderr
        assert REFUSAL in done.stdout and "status of 'demo': rate_limited" in done.stdout
    assert "the previous demo run's usage there was removed" in done.stdout
