from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from quota_hooks.cli import main


def test_demo_refuses_an_unknown_store(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "quota_hooks.cli", "demo", "--store", "x://"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "unknown scheme 'x'" in done.stderr


def test_prices_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices"]) == 0
    out = capsys.readouterr().out
    assert "genai-prices" in out and "providers" in out and "models" in out
    assert "dall-e-3" in out  # the overrides, winning over genai-prices
    assert main(["prices", "gpt-4o-2024-08-06", "--provider", "openai"]) == 0
    out = capsys.readouterr().out
    assert "openai:gpt-4o" in out and "$2.50 per 1M" in out and "$10.00 per 1M" in out
    assert main(["prices", "gemini-2.5-pro", "--provider", "google"]) == 0
    out = capsys.readouterr().out
    assert "above 200,000 tokens" in out and "processing=batch" in out
    assert main(["prices", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_prices_update_from_a_mirror(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--update fetches only when asked, from the URL given (an internal mirror); the price
    book then prices from it."""
    from raw_server import Mirror

    snapshot = [{"id": "acme", "name": "Acme AI", "api_pattern": r"https://api\.acme\.ai",
                 "model_match": {"starts_with": "acme-"},
                 "models": [{"id": "acme-1", "match": {"equals": "acme-1"},
                             "prices": {"input_mtok": 1, "output_mtok": 2}}]},
                # Every snapshot prices OpenAI's gpt-4o-mini: one that does not is refused.
                {"id": "openai", "name": "OpenAI", "api_pattern": r"https://api\.openai\.com",
                 "models": [{"id": "gpt-4o-mini", "match": {"equals": "gpt-4o-mini"},
                             "prices": {"input_mtok": 0.15, "output_mtok": 0.6}}]}]
    target = tmp_path / "snapshot.json"
    monkeypatch.setenv("QUOTA_HOOKS_PRICES_SNAPSHOT", str(target))
    with Mirror(json.dumps(snapshot).encode()) as mirror:
        url = mirror.url
        assert main(["prices", "--update", "--url", url]) == 0
        assert "2 providers, 2 models" in capsys.readouterr().out
        assert main(["prices"]) == 0
        out = capsys.readouterr().out
        assert str(target) in out and url in out and "fetched" in out
        from quota_hooks import PriceBook, UsageRecord
        cost = PriceBook.default().cost(UsageRecord(model="acme-1", provider="acme",
                                                    input_tokens=1_000_000))
        assert cost.usd == 1 and cost.source.endswith("(updated)")
        mirror.stop()
        assert main(["prices", "--update", "--url", url]) == 2  # the mirror is gone
        assert "--url: fetching" in capsys.readouterr().err


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


@pytest.fixture
def recorded(tmp_path: Path) -> str:
    """A SQLite store with usage in two workspaces, on two days."""
    from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
    from quota_hooks.storage import SQLiteStore

    now = time.time()
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    manager = QuotaManager(QuotaPolicy(rpm=10), store=SQLiteStore(tmp_path / "usage.db"),
                           clock=lambda: now - 2 * 86_400)
    manager.record(UsageRecord(workspace_id="acme", model="gpt-4o", input_tokens=1000))
    manager.clock = lambda: now
    for model in ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o"):
        manager.record(UsageRecord(workspace_id="acme", model=model, input_tokens=100,
                                   output_tokens=10))
    manager.record(UsageRecord(workspace_id="beta", model="gpt-4o-mini", input_tokens=50,
                               success=False, status_code=500))
    manager.close()
    return url


def test_status_command(recorded: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "acme", "--store", recorded]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "workspace 'acme': normal (alert level none)"
    assert "rpm" in out and " 3 / 10 " in out  # the policy the app enforces, from the store
    assert main(["status", "acme", "--json", "--store", recorded]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["requests_per_day"]["current"] == 3
    assert data["enhanced_tracking"]["models_breakdown"]["gpt-4o-mini"]["request_count"] == 2


def test_report_command(recorded: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--by", "workspace", "--format", "json", "--store", recorded]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert (rows["acme"]["requests"], rows["beta"]["errors"]) == (4, 1)
    assert main(["report", "--by", "model", "--format", "csv", "--workspace", "acme",
                 "--store", recorded]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("name,requests,errors,tokens,input_tokens,output_tokens,cost_usd,"
                        "unpriced,unpriced_charge_usd")
    assert [line.split(",")[:3] for line in lines[1:]] == [["gpt-4o", "2", "0"],
                                                          ["gpt-4o-mini", "2", "0"]]
    assert main(["report", "--by", "day", "--since", "12h", "--store", recorded]) == 0
    table = capsys.readouterr().out
    assert "by day" in table and len(table.splitlines()) == 3  # only today's row
    assert main(["report", "--by", "method", "--store", recorded]) == 0
    assert "chat.completions" in capsys.readouterr().out


def test_bad_flags_are_named_and_exit_2(recorded: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--since", "last tuesday", "--store", recorded]) == 2
    assert "--since" in capsys.readouterr().err
    assert main(["status", "acme", "--store", "mysql://db"]) == 2
    assert "--store: " in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--store", recorded]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "QUOTA_HOOKS_API_TOKENS" in err
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "99999"])
    assert info.value.code == 2
    assert "between 0 and 65535" in capsys.readouterr().err


def test_demo_serve_opens_the_dashboard_while_it_runs(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "quota_hooks.cli", "demo", "--serve", "--port", str(port),
         "--pace", "0.05", "--hold", "30", "--store", "memory://"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == f"dashboard: http://127.0.0.1:{port}/dashboard/demo"
        seen = 0
        deadline = time.monotonic() + 120
        while seen < 14 and time.monotonic() < deadline:  # the demo's 14 requests arrive
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/api/quota/status/demo", timeout=5)
                seen = reply.json()["requests_per_minute"]["current"]
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert seen == 14
        page = httpx.get(f"http://127.0.0.1:{port}/dashboard/demo", timeout=5)
        assert page.status_code == 200 and "quota-hooks" in page.text
    finally:
        proc.terminate()
        proc.wait(30)


def test_read_commands_never_create_a_store_and_refuse_the_future(
    recorded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "q.db"
    assert main(["status", "acme", "--store", f"sqlite:///{missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.parent.exists()
    assert main(["report", "--since", "2099-01-01", "--store", recorded]) == 2
    assert "--since: '2099-01-01' is in the future" in capsys.readouterr().err
    assert main(["report", "--since", "1" + "0" * 400 + "d", "--store", recorded]) == 2
    assert "--since" in capsys.readouterr().err


def test_a_busy_port_is_named_and_exits_2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--store", "memory://"]) == 2
        assert f"--port {port}: cannot listen" in capsys.readouterr().err
        assert main(["demo", "--serve", "--port", str(port), "--store", "memory://",
                     "--plain"]) == 2
        assert f"--port {port}" in capsys.readouterr().err


def test_reprice_recomputes_stored_costs(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Records priced by an old override are priced again by today's book: the records, the
    month total and the breakdowns move by the difference, and the output says so."""
    from decimal import Decimal

    from quota_hooks import PriceBook, QuotaManager, QuotaPolicy, UsageRecord
    from quota_hooks.storage import SQLiteStore

    db = tmp_path / "usage.db"
    old = PriceBook.default().with_overrides({"gpt-4o": {"input": "100", "output": "100"}})
    manager = QuotaManager(QuotaPolicy.unlimited(), store=SQLiteStore(db), prices=old)
    for _ in range(3):
        manager.record(UsageRecord(workspace_id="acme", model="gpt-4o", provider="openai",
                                   input_tokens=1_000_000, output_tokens=0))
    manager.record(UsageRecord(workspace_id="acme", model="gpt-4o-mini", provider="openai",
                               input_tokens=1_000_000))
    assert manager.status("acme").monthly_budget_usd.current == pytest.approx(300.15)
    manager.close()
    url = f"sqlite:///{db}"
    assert main(["reprice", "--since", "1d", "--dry-run", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "repriced 4 record(s)" in out and "3 would change" in out
    assert main(["reprice", "--since", "1d", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "3 changed" in out and "$300.15 -> $7.65" in out and "totals changed" in out
    after = QuotaManager(QuotaPolicy.unlimited(), store=SQLiteStore(db))
    status = after.status("acme")
    assert status.monthly_budget_usd.current == pytest.approx(7.65)  # 3 x $2.50 + $0.15
    model = status.enhanced_tracking.models_breakdown["gpt-4o"]  # type: ignore[union-attr]
    assert model.cost_usd == pytest.approx(7.5)
    assert {r.cost for r in after.store.recent("workspace:acme", 10)} == {
        Decimal("2.5"), Decimal("0.15")}
    after.close()
    assert main(["reprice", "--since", "1d", "--store", url]) == 0
    assert "0 changed" in capsys.readouterr().out  # idempotent
    assert main(["reprice", "--since", "1d", "--store", "memory://"]) == 2
    assert "keeps every record" in capsys.readouterr().err
