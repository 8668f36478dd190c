"""``GET /metrics``: the store in the Prometheus text format, parsed with
``prometheus_client.parser``, after calls from two processes on one SQLite file; its auth; its
bounded labels."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.errors import ConfigurationError
from quota_hooks.server import PrometheusMetrics, create_app
from quota_hooks.storage import store_from_url
from quota_hooks.testing import ManualClock

TOKENS = "*:admin-token-1,a:token-a-123"
ADMIN, TOKEN_A, SCRAPER = "admin-token-1", "token-a-123", "scrape-token-9"
LOCAL = {"host": "127.0.0.1:8000"}

#: One writer process: its calls, with their own costs (exact decimals).
WRITER = textwrap.dedent("""
    import sys
    from decimal import Decimal
    from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
    from quota_hooks.storage import store_from_url

    url, workspace, calls, failures = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    manager = QuotaManager(store=store_from_url(url))  # enforces the policies in the store
    for i in range(calls):
        manager.record(UsageRecord(workspace_id=workspace, model="gpt-4o-mini",
                                   api_method="chat.completions", input_tokens=100,
                                   output_tokens=20, cost=Decimal("0.125")))
    for i in range(failures):
        manager.record(UsageRecord(workspace_id=workspace, model="gpt-4o-mini",
                                   api_method="embeddings", success=False, status_code=500))
    manager.close()
""")


def scrape(client: TestClient, token: str | None = ADMIN) -> dict[str, list[Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples
            for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, list[Any]], sample: str, **labels: str) -> float:
    family = sample.removesuffix("_total")
    found = [s.value for s in families[family] if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, families.get(family))
    return float(found[0])


@pytest.fixture
def manager(clock: ManualClock) -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=10, monthly_budget_usd=5), clock=clock)
    for ws, n in (("a", 3), ("b", 2), ("c", 1)):
        for _ in range(n):
            manager.record(UsageRecord(workspace_id=ws, model="gpt-4o-mini", input_tokens=100,
                                       output_tokens=20, cost=Decimal("0.01")))
    yield manager
    manager.close()


def test_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    # The policy every process sharing the file enforces, stored first.
    QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal("2"), rpm=100),
                 store=store_from_url(url)).close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, ws, str(calls), str(fails)],
                                stderr=subprocess.PIPE, text=True)
               for ws, calls, fails in (("acme", 3, 1), ("acme", 2, 0), ("beta", 1, 2))]
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err

    manager = QuotaManager(store=store_from_url(url))
    try:
        with TestClient(create_app(manager, tokens=TOKENS)) as client:
            seen = scrape(client)
    finally:
        manager.close()
    # acme: 3 + 2 calls from two processes, one failure; beta: 1 call, 2 failures.
    assert value(seen, "quota_hooks_requests_total", workspace="acme", model="gpt-4o-mini",
                 outcome="success") == 5
    assert value(seen, "quota_hooks_requests_total", workspace="acme", model="gpt-4o-mini",
                 outcome="error") == 1
    assert value(seen, "quota_hooks_api_method_requests_total", workspace="beta",
                 api_method="embeddings", outcome="error") == 2
    assert value(seen, "quota_hooks_tokens_total", workspace="acme", model="gpt-4o-mini",
                 type="input") == 500
    assert value(seen, "quota_hooks_tokens_total", workspace="beta", model="gpt-4o-mini",
                 type="output") == 20
    assert value(seen, "quota_hooks_spend_usd_total", workspace="acme",
                 model="gpt-4o-mini") == 0.625
    assert value(seen, "quota_hooks_budget_used_usd", workspace="acme", period="month") == 0.625
    assert value(seen, "quota_hooks_budget_limit_usd", workspace="acme", period="month") == 2
    assert value(seen, "quota_hooks_budget_remaining_usd", workspace="acme",
                 period="month") == 1.375
    assert value(seen, "quota_hooks_limit_usage_ratio", workspace="beta",
                 metric="rpm") == 0.03
    statuses = {s.labels["status"]: s.value for s in seen["quota_hooks_status"]
                if s.labels["workspace"] == "acme"}
    assert statuses == {"normal": 1, "warning": 0, "rate_limited": 0, "quota_exceeded": 0,
                        "degraded": 0}


def test_day_and_week_budgets_are_exported_per_period(clock: ManualClock) -> None:
    manager = QuotaManager(QuotaPolicy(daily_budget_usd=Decimal("0.5"),
                                       weekly_budget_usd=Decimal("2")), clock=clock)
    manager.record(UsageRecord(model="gpt-4o-mini", workspace_id="acme", input_tokens=10,
                               cost=Decimal("0.125")))
    with TestClient(create_app(manager, tokens=TOKENS)) as client:
        seen = scrape(client)
    manager.close()
    for period, limit in (("day", 0.5), ("week", 2), ("month", 100)):
        assert value(seen, "quota_hooks_budget_used_usd", workspace="acme",
                     period=period) == 0.125
        assert value(seen, "quota_hooks_budget_limit_usd", workspace="acme",
                     period=period) == limit
    assert value(seen, "quota_hooks_budget_remaining_usd", workspace="acme",
                 period="day") == 0.375
    assert value(seen, "quota_hooks_limit_usage_ratio", workspace="acme",
                 metric="daily_budget_usd") == 0.25


def test_metrics_auth(manager: QuotaManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTA_HOOKS_METRICS_TOKEN", SCRAPER)
    with TestClient(create_app(manager, tokens=TOKENS)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope-nope"}
                          ).status_code == 401
        forbidden = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN_A}"})
        assert forbidden.status_code == 403 and "QUOTA_HOOKS_METRICS_TOKEN" in forbidden.text
        assert scrape(client, ADMIN) and scrape(client, SCRAPER)
        # The metrics token reads /metrics only.
        assert client.get("/api/quota/status/a", headers={
            "Authorization": f"Bearer {SCRAPER}"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}
                          ).headers["x-content-type-options"] == "nosniff"


def test_an_open_server_answers_loopback_unless_a_metrics_token_is_set(
    manager: QuotaManager
) -> None:
    with TestClient(create_app(manager, tokens="")) as client:
        assert client.get("/metrics", headers=LOCAL).status_code == 200
        assert client.get("/metrics").status_code == 403  # Host "testserver": not loopback
    with TestClient(create_app(manager, tokens="", metrics_token=SCRAPER)) as client:
        assert client.get("/metrics", headers=LOCAL).status_code == 401
        assert client.get("/metrics", headers={**LOCAL, "Authorization": f"Bearer {SCRAPER}"}
                          ).status_code == 200


def test_metrics_can_be_switched_off_and_bad_settings_are_named(
    manager: QuotaManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(manager, tokens=TOKENS, metrics=False)) as client:
        assert client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}
                          ).status_code == 404
    with pytest.raises(ConfigurationError, match="metrics_token must be at least 8"):
        create_app(manager, tokens=TOKENS, metrics_token="short")
    monkeypatch.setenv("QUOTA_HOOKS_METRICS_TOKEN", "x")
    with pytest.raises(ConfigurationError, match="QUOTA_HOOKS_METRICS_TOKEN must be at least"):
        create_app(manager, tokens=TOKENS)
    monkeypatch.delenv("QUOTA_HOOKS_METRICS_TOKEN")
    with pytest.raises(ConfigurationError, match="metrics must be True, False or a"):
        create_app(manager, tokens=TOKENS, metrics="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_workspaces must be a whole number"):
        PrometheusMetrics(manager, max_workspaces=0)
    with pytest.raises(ConfigurationError, match="max_models must be a whole number"):
        PrometheusMetrics(manager, max_models=True)


def test_labels_are_bounded_and_other_never_drops(manager: QuotaManager) -> None:
    exporter = PrometheusMetrics(manager, max_workspaces=2, max_models=1)
    with TestClient(create_app(manager, tokens=TOKENS, metrics=exporter)) as client:
        first = scrape(client)
        # The biggest spenders got their names at the first scrape: a (3 calls), b (2).
        assert {s.labels["workspace"] for s in first["quota_hooks_requests"]} == {
            "a", "b", "other"}
        assert value(first, "quota_hooks_requests_total", workspace="other",
                     model="gpt-4o-mini", outcome="success") == 1
        # c grows past a and b, and a new model comes: their labels stay, so that no
        # series of "other" ever drops (which Prometheus would read as a reset).
        for _ in range(5):
            manager.record(UsageRecord(workspace_id="c", model="gpt-4.1", input_tokens=10,
                                       cost=Decimal("0.5")))
        later = scrape(client)
    assert value(later, "quota_hooks_requests_total", workspace="other", model="gpt-4o-mini",
                 outcome="success") == 1
    assert value(later, "quota_hooks_requests_total", workspace="other", model="other",
                 outcome="success") == 5
    assert value(later, "quota_hooks_spend_usd_total", workspace="other", model="other") == 2.5
    assert {s.labels["workspace"] for s in later["quota_hooks_status"]} == {"a", "b"}


def test_store_failures_answer_503(manager: QuotaManager, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    def down(*args: Any) -> Any:
        raise OSError("connection refused to 10.0.0.7:6379")

    with TestClient(create_app(manager, tokens=TOKENS)) as client:
        monkeypatch.setattr(manager.store, "breakdown", down)
        response = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 503 and "10.0.0.7" not in response.text
    assert "10.0.0.7" in caplog.text  # the details go to the server's log


def test_the_grafana_dashboard_uses_the_names_metrics_serves(manager: QuotaManager) -> None:
    import json
    import re

    path = Path(__file__).parent.parent / "examples" / "grafana_dashboard.json"
    dashboard = json.loads(path.read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"quota_hooks_[a-z_]+", target["expr"])}
    with TestClient(create_app(manager, tokens=TOKENS)) as client:
        served = {sample.name for samples in scrape(client).values() for sample in samples}
    assert used and used <= served, used - served
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for wanted in ("spend per day", "budget used", "status", "tokens by model"):
        assert wanted in titles
