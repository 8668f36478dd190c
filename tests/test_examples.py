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


#: What each example must print (beyond running cleanly, offline).
EXPECTED = {
    "openai_client.py": ["workspace acme: normal, 3 requests, 160 tokens"],
    "litellm_callback.py": [
        "workspace acme: rate_limited, 5 requests",  # 4 calls and the 429
        "chat.completions   5 calls, 1 errors",
    ],
    "langchain_handler.py": [
        "workspace acme: normal, 7 model calls, 1120 tokens",  # 3 chains x 2 calls + a stream
        "workspace beta: normal, 1 model calls, 160 tokens",
    ],
    "custom_alert_sink.py": [
        "[quota_exceeded] Workspace 'acme' has used up its monthly budget",
        "[warning] Workspace 'acme' reached 80% of its requests-per-minute limit",
        "sent 5, failed 5 (the flaky sink), dropped 0",
    ],
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    out = run(path)
    assert out.strip()
    for expected in EXPECTED.get(path.name, []):
        assert expected in out


def test_the_four_uses_each_have_an_example() -> None:
    assert set(EXPECTED) <= {p.name for p in EXAMPLES}


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

