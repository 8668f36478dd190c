from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quota_hooks.cli import main


def demo(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "quota_hooks.cli", "demo", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_demo_drives_real_clients_and_prints_the_report(tmp_path: Path) -> None:
    out = demo(tmp_path)  # the default store: sqlite:///quota.db in the working directory
    assert (tmp_path / "quota.db").exists()
    assert "store: SQLiteStore('quota.db'" in out
    assert "[rate_limited] Workspace 'demo' got a 429" in out
    # gpt-4o, 640 + 180 tokens = $0.00276 a call: the 4th no longer fits a $0.01 budget
    assert ("refused after 3 calls, before sending: workspace:demo-small-budget: the monthly "
            "budget of $0.01 has no room for this call ($0.00828 spent or held)") in out
    assert "openai  sync   chat stream" in out
    assert "litellm async  acompletion" in out
    assert "langchain stream chat" in out
    report = json.loads(out[out.index("{"):])
    assert report["workspace_id"] == "demo"
    assert report["status"] == "rate_limited"  # the demo's 429
    # OpenAI: 8 calls reached the fake, 7 metered (models.list is exempt), 2 of them the 429
    # and its retry. LiteLLM: 2 calls to the loopback fake and one mocked 429. LangChain: a
    # batch of two chains and one stream, counted once each (by the handler, not twice).
    assert report["requests_per_minute"]["current"] == 7 + 3 + 3
    methods = report["enhanced_tracking"]["api_methods_breakdown"]
    assert methods["chat.completions"] == {
        "request_count": 5 + 3 + 3, "error_count": 1 + 1, "tokens_used": (4 + 2 + 3) * 820,
        # per 1M: gpt-4o-mini 7 x (128 x 0.15 + 512 x 0.075 + 180 x 0.60)
        #  + gpt-4o (128 x 2.50 + 512 x 1.25 + 180 x 10) + gpt-4.1-mini (128 x 0.40 + 512 x 0.10
        #  + 180 x 1.60); litellm's price for its two calls equals ours
        "cost_usd": pytest.approx(0.0043096, abs=1e-12),
    }
    assert methods["models"]["request_count"] == 1
    # the SQLite store keeps usage across runs: a second run adds to the first
    again = demo(tmp_path)
    assert "refused after 0 calls" in again  # the budget stays spent
    report = json.loads(again[again.index("{"):])
    assert report["requests_per_minute"]["current"] == 2 * 13


def test_demo_store_option(tmp_path: Path) -> None:
    out = demo(tmp_path, "--store", "memory://")
    assert "store: MemoryStore" in out and not (tmp_path / "quota.db").exists()
    done = subprocess.run([sys.executable, "-m", "quota_hooks.cli", "demo", "--store", "x://"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "unknown scheme 'x'" in done.stderr


def test_prices_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "openai/gpt-4o-2024-08-06"]) == 0
    out = capsys.readouterr().out
    assert "gpt-4o" in out and "2.50" in out and "10.00" in out
    assert main(["prices", "no-such-model"]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "frobnicate" in capsys.readouterr().err
