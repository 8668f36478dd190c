"""Every example runs, offline, and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(path: Path) -> str:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    assert run(path).strip()


def test_quickstart_prints_a_correct_report() -> None:
    out = run(ROOT / "examples" / "quickstart.py")
    assert "status: rate_limited" in out  # the 429 in the mix
    assert re.search(r"monthly_budget_usd\s+0\.115069 / 0\.13\s+\(88\.51%\)", out)
    assert '"gpt-4o-mini": {' in out


def test_readme_quickstart_runs_and_prints_what_it_says() -> None:
    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines()[0] == "normal 0.000289"


def test_each_adapter_example_prints_the_usage_it_recorded() -> None:
    out = run(ROOT / "examples" / "openai_client.py")
    assert "workspace acme: normal, 3 requests, 160 tokens" in out
    out = run(ROOT / "examples" / "litellm_callback.py")
    assert "workspace acme: rate_limited, 5 requests" in out  # 4 calls and the 429
    assert "chat.completions   5 calls, 1 errors" in out
    out = run(ROOT / "examples" / "langchain_handler.py")
    assert "workspace acme: normal, 7 model calls, 1120 tokens" in out  # 3 chains x 2 + stream
    assert "workspace beta: normal, 1 model calls, 160 tokens" in out


def test_custom_alert_sink_example_pages_and_survives_a_failing_sink() -> None:
    out = run(ROOT / "examples" / "custom_alert_sink.py")
    assert "[quota_exceeded] Workspace 'acme' has used up its monthly budget" in out
    assert "[warning] Workspace 'acme' reached 80% of its requests-per-minute limit" in out
    assert "sent 5, failed 5 (the flaky sink), dropped 0" in out
