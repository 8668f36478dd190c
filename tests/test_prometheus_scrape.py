"""A real Prometheus (Debian's ``prometheus``) scrapes ``/metrics`` of a ``quota-hooks serve``
started here, with the metrics token, both on 127.0.0.1; the test asks Prometheus's HTTP API
until the spend appears. In CI (``CI`` set) a missing Prometheus fails the test (.ci/run
installs it); elsewhere it skips."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.storage import store_from_url

SCRAPER = "scrape-token-9"
ADMIN = "admin-token-1"
DEADLINE = 20.0


def _prometheus() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's prometheus on PATH (.ci/run installs it)")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                     if token else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_until(what: str, check: Any, procs: list[subprocess.Popen[str]]) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args[0]} exited ({proc.returncode}) waiting for {what}: "
                            f"{proc.stderr.read() if proc.stderr else ''}")
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"no {what} within {DEADLINE:g} s")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


def test_a_real_prometheus_scrapes_the_spend(tmp_path: Path,
                                             started: list[subprocess.Popen[str]]) -> None:
    prometheus = _prometheus()
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    writer = QuotaManager(QuotaPolicy(), store=store_from_url(url))
    for cost in ("0.125", "0.25", "0.5"):
        writer.record(UsageRecord(workspace_id="acme", model="gpt-4o-mini", input_tokens=100,
                                  output_tokens=20, cost=Decimal(cost)))
    writer.close()

    app_port, prom_port = _free_port(), _free_port()
    env = {**os.environ, "QUOTA_HOOKS_API_TOKENS": f"*:{ADMIN}",
           "QUOTA_HOOKS_METRICS_TOKEN": SCRAPER}
    started.append(subprocess.Popen(
        [sys.executable, "-m", "quota_hooks.cli", "serve", "--store", url, "--host",
         "127.0.0.1", "--port", str(app_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    base = f"http://127.0.0.1:{app_port}"
    _wait_until("quota-hooks serve", lambda: _get(base + "/healthz")[0] == 200, started)
    assert _get(base + "/metrics")[0] == 401  # Prometheus must bring the token

    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{
            "job_name": "quota-hooks",
            "metrics_path": "/metrics",
            "authorization": {"type": "Bearer", "credentials": SCRAPER},
            "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}],
        }],
    }))
    started.append(subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    api = f"http://127.0.0.1:{prom_port}/api/v1/query?query="

    def query(promql: str) -> list[Any]:
        status, body = _get(api + urllib.parse.quote(promql))
        if status != 200:
            return []
        result: list[Any] = json.loads(body)["data"]["result"]
        return result

    spend = _wait_until("quota_hooks_spend_usd_total in Prometheus",
                        lambda: query("quota_hooks_spend_usd_total"), started)
    [series] = spend
    assert series["metric"]["workspace"] == "acme" and series["metric"]["model"] == "gpt-4o-mini"
    assert series["metric"]["job"] == "quota-hooks"
    assert float(series["value"][1]) == 0.875
    [up] = query('up{job="quota-hooks"}')
    assert up["value"][1] == "1"
    [used] = query('quota_hooks_budget_used_usd{workspace="acme"}')
    assert float(used["value"][1]) == 0.875

    # Every query of the Grafana dashboard is valid PromQL for this Prometheus.
    dashboard = json.loads((Path(__file__).parent.parent / "examples" /
                            "grafana_dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$workspace", ".*")
                    .replace("$__rate_interval", "1m").replace("$__interval", "1h"))
            status, body = _get(api + urllib.parse.quote(expr))
            assert status == 200 and json.loads(body)["status"] == "success", (
                panel["title"], body)
