"""``GET /metrics``: the store's usage in the Prometheus text format (extra ``[server]``, which
brings ``prometheus-client``).

Every value is read from the store at scrape time, never counted in this process, so one
``quota-hooks serve`` shows the truth for every process that shares the store (SQLite or
Redis), however many workers write to it: no per-process counters that disagree.

Counters (``_total``) are the current budget month's totals of each workspace (its policy's
calendar month): they restart when a month begins, which Prometheus's ``rate()`` and
``increase()`` read as a counter reset, as after a restart:

* ``quota_hooks_requests_total{workspace,model,outcome}``: calls, ``outcome`` ``success`` or
  ``error``;
* ``quota_hooks_api_method_requests_total{workspace,api_method,outcome}``: the same calls by
  API method (the store keeps a month per model and per method apart, not per pair: adding
  the two families would count every call twice);
* ``quota_hooks_tokens_total{workspace,model,type}``: ``type`` ``input`` or ``output``;
* ``quota_hooks_spend_usd_total{workspace,model}``: what the priced calls cost (calls
  without a price are left out: their cost is unknown, not 0).

Gauges, per workspace labelled by name:

* ``quota_hooks_budget_limit_usd``, ``quota_hooks_budget_used_usd`` and
  ``quota_hooks_budget_remaining_usd`` ``{workspace,period}`` (``period`` is ``month``, and
  ``day`` and ``week`` for the budgets a policy sets; used
  includes what the budget charged calls without a price);
* ``quota_hooks_limit_usage_ratio{workspace,metric}``: used / limit, for each limit set;
* ``quota_hooks_status{workspace,status}``: one series per status, 1 for the current one.

Label sets are bounded: the first ``max_workspaces`` workspaces (the biggest spenders first,
at the first scrape) and ``max_models`` models have their own label; the others are counted
under ``other`` (and have no gauges). A name keeps its label for the life of the server, so
no ``other`` series ever drops.

Money is integer nano-dollars until it is written; it becomes dollars only in the text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import generate_latest
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quota_hooks.server's /metrics needs prometheus-client: pip install "
        "'quota-hooks[server]'") from exc

from .._observe import OTHER, BoundedLabels, check_limit, read_numbers, usd
from ..errors import StorageError
from ..manager import QuotaManager
from ..status import QuotaStatus
from ..storage.base import OTHER as STORE_OTHER
from ..storage.base import Aggregate, workspace_scope
from ..windows import month_key

__all__ = ["CONTENT_TYPE", "METRICS_TOKEN_ENV", "PrometheusMetrics"]

#: The media type of the body (the Prometheus text format 0.0.4, which ``generate_latest``
#: writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: A bearer token that may read ``/metrics`` (and nothing else), besides the admin tokens.
METRICS_TOKEN_ENV = "QUOTA_HOOKS_METRICS_TOKEN"


@dataclass
class _Month:
    """One workspace's month, read from the store."""

    models: dict[str, Aggregate]
    methods: dict[str, Aggregate]
    spend: int = field(init=False)
    calls: int = field(init=False)

    def __post_init__(self) -> None:
        self.spend = sum(a.cost_nanos + a.unpriced_nanos for a in self.models.values())
        self.calls = sum(a.requests for a in self.models.values())


class PrometheusMetrics:
    """The collector behind ``/metrics`` (a ``prometheus_client`` collector over the store).

    Args:
        manager: whose store (and policies) to read.
        max_workspaces: workspaces labelled by name; the others are ``other``.
        max_models: models labelled by name; the others are ``other``.

    :meth:`render` gives the whole text; a scrape reads each workspace's month per model and
    per API method, and the counters and status of each workspace labelled by name.
    """

    def __init__(self, manager: QuotaManager, *, max_workspaces: int = 50,
                 max_models: int = 50) -> None:
        self.manager = manager
        self._workspaces = BoundedLabels(check_limit("max_workspaces", max_workspaces),
                                         "workspaces on /metrics")
        self._models = BoundedLabels(check_limit("max_models", max_models), "models on /metrics")
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"PrometheusMetrics(max_workspaces={self._workspaces.limit}, "
                f"max_models={self._models.limit})")

    def render(self) -> bytes:
        """The Prometheus text of the store now. Raises :class:`StorageError` when the store
        cannot be read (the server answers 503)."""
        with self._lock:  # one scrape at a time: the label sets are shared
            return generate_latest(self._registry)

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on the store (``prometheus_client``)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families (``prometheus_client``'s collector protocol)."""
        manager = self.manager
        months = self._months()
        self._workspaces.admit(sorted(months, key=lambda w: (-months[w].spend,
                                                             -months[w].calls, w)))
        totals: dict[str, dict[str, int]] = {}
        for month in months.values():
            for name, agg in month.models.items():
                entry = totals.setdefault(name, {"spend": 0, "calls": 0})
                entry["spend"] += agg.cost_nanos + agg.unpriced_nanos
                entry["calls"] += agg.requests
        self._models.admit(sorted((n for n in totals if n != STORE_OTHER),
                                  key=lambda n: (-totals[n]["spend"], -totals[n]["calls"], n)))

        requests: dict[tuple[str, ...], int] = {}
        methods: dict[tuple[str, ...], int] = {}
        tokens: dict[tuple[str, ...], int] = {}
        spend: dict[tuple[str, ...], int] = {}
        for workspace, month in months.items():
            ws = self._workspaces(workspace)
            for name, agg in month.models.items():
                model = OTHER if name == STORE_OTHER else self._models(name)
                _add(requests, (ws, model, "success"), agg.requests - agg.errors)
                _add(requests, (ws, model, "error"), agg.errors)
                _add(tokens, (ws, model, "input"), agg.input_tokens)
                _add(tokens, (ws, model, "output"), agg.output_tokens)
                _add(spend, (ws, model), agg.cost_nanos)
            for name, agg in month.methods.items():
                method = OTHER if name == STORE_OTHER else name
                _add(methods, (ws, method, "success"), agg.requests - agg.errors)
                _add(methods, (ws, method, "error"), agg.errors)

        yield _counter("quota_hooks_requests", "Calls in the current budget month, by model.",
                       ["workspace", "model", "outcome"], requests)
        yield _counter("quota_hooks_api_method_requests",
                       "Calls in the current budget month, by API method.",
                       ["workspace", "api_method", "outcome"], methods)
        yield _counter("quota_hooks_tokens", "Tokens in the current budget month.",
                       ["workspace", "model", "type"], tokens)
        yield _counter("quota_hooks_spend_usd",
                       "USD the priced calls of the current budget month cost.",
                       ["workspace", "model"], spend, money=True)

        limit = GaugeMetricFamily("quota_hooks_budget_limit_usd",
                                  "The budget of the current period, USD.",
                                  labels=["workspace", "period"])
        used = GaugeMetricFamily("quota_hooks_budget_used_usd",
                                 "The budget used in the current period, USD.",
                                 labels=["workspace", "period"])
        remaining = GaugeMetricFamily("quota_hooks_budget_remaining_usd",
                                      "The budget left in the current period, USD (never "
                                      "below 0).", labels=["workspace", "period"])
        ratio = GaugeMetricFamily("quota_hooks_limit_usage_ratio",
                                  "Used / limit of each limit set (1 is at the limit).",
                                  labels=["workspace", "metric"])
        status = GaugeMetricFamily("quota_hooks_status",
                                   "The workspace's status: 1 for the current one.",
                                   labels=["workspace", "status"])
        for workspace in self._workspaces.known():
            if workspace not in months:
                continue
            numbers = read_numbers(manager, workspace)
            for period, budget in numbers.budgets.items():
                used.add_metric([workspace, period], usd(budget.used_nanos))
                left = budget.remaining
                if budget.limit is not None and left is not None:
                    limit.add_metric([workspace, period], float(budget.limit))
                    remaining.add_metric([workspace, period], float(left))
            for metric, value in numbers.ratios.items():
                ratio.add_metric([workspace, metric], value)
            for state in QuotaStatus:
                status.add_metric([workspace, state.value], float(numbers.status is state))
        yield from (limit, used, remaining, ratio, status)

    def _months(self) -> dict[str, _Month]:
        """Every workspace's current month per model and per API method."""
        manager = self.manager
        try:
            names = manager.workspaces()
            now = manager.now()
            months: dict[str, _Month] = {}
            for workspace in names:
                month = month_key(now, manager.policy_for(workspace).timezone)
                scope = workspace_scope(workspace)
                months[workspace] = _Month(manager.store.breakdown(scope, month, "model"),
                                           manager.store.breakdown(scope, month, "api_method"))
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"reading the store for /metrics failed: {exc}") from exc
        return months


def _add(table: dict[tuple[str, ...], int], key: tuple[str, ...], value: int) -> None:
    table[key] = table.get(key, 0) + value


def _counter(name: str, documentation: str, labels: list[str],
             values: dict[tuple[str, ...], int], *, money: bool = False) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key in sorted(values):
        family.add_metric(list(key), usd(values[key]) if money else float(values[key]))
    return family
