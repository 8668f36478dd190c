"""OpenTelemetry GenAI metrics of every call a :class:`~quota_hooks.QuotaManager` sees (extra
``[otel]``: ``opentelemetry-api``; bring the SDK or distro you export with)::

    from opentelemetry.sdk.metrics import MeterProvider
    from quota_hooks.otel import instrument

    instrumentation = instrument(manager)                  # the global meter provider
    instrumentation = instrument(manager, MeterProvider(...), workspace_attribute=True)

Names follow the OpenTelemetry GenAI semantic conventions
(``open-telemetry/semantic-conventions-genai``: ``model/gen-ai/metrics.yaml`` and
``model/gen-ai/token-metrics.yaml``). By default, the names dashboards consume today:

* ``gen_ai.client.token.usage``: histogram, ``{token}``, ``gen_ai.token.type`` ``input`` or
  ``output``, with the spec's bucket boundaries (1, 4, 16, ... 67108864);
* ``gen_ai.client.operation.duration``: histogram, ``s``, from the record's latency (buckets
  0.01, 0.02, ... 81.92), with ``error.type`` on failures.

With ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` (the spec's transition
switch: the latest names instead of the old ones), ``gen_ai.client.token.usage`` gives way to
the counters ``gen_ai.client.inference.usage.input_tokens``, ``.output_tokens``,
``.cache_read.input_tokens``, ``.cache_write.input_tokens`` and ``.reasoning.output_tokens``
(by ``gen_ai.token.modality``; failed calls too, at 0 with modality ``unknown`` when no usage
came back) and the per-operation histograms ``gen_ai.client.inference.operation.input_tokens``
and ``.output_tokens`` (successful calls only).

Attributes: ``gen_ai.operation.name`` (``chat``, ``text_completion``, ``embeddings``, ...),
``gen_ai.provider.name`` (the spec's well-known names: ``openai``, ``azure.ai.openai``,
``anthropic``, ...), ``gen_ai.request.model`` (the model the call asked for, when it was
reserved; else the record's), ``gen_ai.response.model`` (successful calls),
``openai.response.service_tier`` and, on failures, ``error.type``. ``server.address`` is not
set: a record does not carry the server's address.

Our own namespace, for what the spec has no name for yet:

* ``quota_hooks.cost`` (USD): what the calls cost, kept as integer nano-dollars and turned into
  dollars only when exported; a call without a price is left out (its cost is unknown, not 0);
* ``quota_hooks.limit.decisions``: reservations ``admitted``, ``waited`` (admitted after
  waiting) and ``refused`` (with ``quota_hooks.metric``, the limit that refused);
* with ``workspace_attribute=True``, observable gauges read from the store (the same value in
  every process sharing it: aggregate them with ``max``): ``quota_hooks.budget.used`` and
  ``quota_hooks.budget.limit`` (USD, per ``quota_hooks.period``), ``quota_hooks.limit.usage``
  (the used fraction of each limit, per ``quota_hooks.metric``) and ``quota_hooks.status``
  (one series per status, 1 for the current one).

Cardinality is bounded: the workspace (``quota_hooks.workspace``) is an attribute only with
``workspace_attribute=True``, for the first ``max_workspaces`` workspaces seen (the rest are
``other``); models beyond ``max_models`` are ``other`` too, and so are operations, providers
and error types beyond a few dozen.

Cost on the call's path: a recorded call is queued (about a microsecond); the OpenTelemetry
instruments are fed when the metrics are collected (every callback of ours drains the queue
first, so a collection includes every call recorded before it), when ``manager.drain()`` or
:meth:`Instrumentation.flush` is called, or by a background thread once
``max_pending`` calls wait. The SDK's own work then runs on the collecting thread, never on
the call's.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quota_hooks.otel needs OpenTelemetry: pip install 'quota-hooks[otel]'") from exc

import anyio.to_thread

from ._observe import OTHER, BoundedLabels, WorkspaceNumbers, check_limit, read_numbers, usd
from .errors import ConfigurationError
from .manager import QuotaManager
from .metrics import METRIC_NAMES
from .pricing import to_nanos
from .status import QuotaStatus
from .storage.base import Reservation, UsageEntry
from .typing import Decision
from .usage import MAX_COST, Estimate, UsageRecord

__all__ = [
    "DURATION_BUCKETS",
    "LATEST_EXPERIMENTAL",
    "OPT_IN_ENV",
    "TOKEN_BUCKETS",
    "Instrumentation",
    "instrument",
]

logger = logging.getLogger("quota_hooks")

#: The spec's transition switch, a comma-separated list of opt-ins.
OPT_IN_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
#: The opt-in value for the latest experimental GenAI conventions.
LATEST_EXPERIMENTAL = "gen_ai_latest_experimental"
#: ``gen_ai.client.token.usage`` and the per-operation token histograms: the spec's explicit
#: bucket boundaries.
TOKEN_BUCKETS: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576,
                                  4194304, 16777216, 67108864)
#: ``gen_ai.client.operation.duration``: the spec's explicit bucket boundaries, in seconds.
DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56,
                                       5.12, 10.24, 20.48, 40.96, 81.92)

TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
USAGE_INPUT = "gen_ai.client.inference.usage.input_tokens"
USAGE_OUTPUT = "gen_ai.client.inference.usage.output_tokens"
USAGE_CACHE_READ = "gen_ai.client.inference.usage.cache_read.input_tokens"
USAGE_CACHE_WRITE = "gen_ai.client.inference.usage.cache_write.input_tokens"
USAGE_REASONING = "gen_ai.client.inference.usage.reasoning.output_tokens"
OPERATION_INPUT = "gen_ai.client.inference.operation.input_tokens"
OPERATION_OUTPUT = "gen_ai.client.inference.operation.output_tokens"
COST = "quota_hooks.cost"
DECISIONS = "quota_hooks.limit.decisions"
BUDGET_USED = "quota_hooks.budget.used"
BUDGET_LIMIT = "quota_hooks.budget.limit"
LIMIT_USAGE = "quota_hooks.limit.usage"
STATUS = "quota_hooks.status"

WORKSPACE = "quota_hooks.workspace"
_USAGE_COUNTERS = (USAGE_INPUT, USAGE_OUTPUT, USAGE_CACHE_READ, USAGE_CACHE_WRITE,
                   USAGE_REASONING)

#: Our API methods as the spec's ``gen_ai.operation.name``; others keep their own name.
_OPERATIONS = {
    "chat.completions": "chat",
    "responses": "chat",  # the spec's OpenAI page: openai.api.type "responses", operation chat
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses.retrieve": "fetch_response",
}
#: Operations whose usage is text unless the provider broke it down by modality.
_TEXT_OPERATIONS = frozenset({"chat", "text_completion", "embeddings"})
#: Operations that report token usage even when it is 0.
_TOKEN_OPERATIONS = _TEXT_OPERATIONS
#: Provider ids (genai-prices', LiteLLM's) as the spec's well-known ``gen_ai.provider.name``.
_PROVIDERS = {
    # The OpenAI SDK at a host no price list knows: the spec's provider name is the format
    # flavor, "best knowledge ... may differ from the actual upstream provider".
    "openai-compatible": "openai",
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "aws": "aws.bedrock",
    "bedrock": "aws.bedrock",
    "google": "gcp.gen_ai",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "mistral": "mistral_ai",
    "x-ai": "x_ai",
    "xai": "x_ai",
    "moonshotai": "moonshot_ai",
    "moonshot": "moonshot_ai",
    "watsonx": "ibm.watsonx.ai",
}
_SMALL_LIMIT = 32
#: Distinct attribute sets kept per instrument; past it, new ones share one set of ``other``.
_MAX_ATTRIBUTE_SETS = 2000
#: Reservations whose requested model is remembered until their record arrives.
_MAX_REMEMBERED = 10_000
_MAX_COST_NANOS = to_nanos(MAX_COST)

#: The managers instrumented now (one instrumentation each).
_INSTRUMENTED: weakref.WeakSet[QuotaManager] = weakref.WeakSet()

_Key = tuple[str, ...]
#: A recorded call waiting for a collection: its record, the model its reservation asked
#: for, its OpenTelemetry context, and its cost in nano-dollars (None: no price).
_Pending = tuple[UsageRecord, str | None, Context, int | None]


@dataclass(frozen=True, slots=True)
class _Attrs:
    """The attribute dicts of one kind of call, built once."""

    key: _Key
    base: dict[str, str | int]
    duration: dict[str, str | int]
    input: dict[str, str | int]
    output: dict[str, str | int]


def _latest(environ: Mapping[str, str]) -> bool:
    values = {v.strip() for v in environ.get(OPT_IN_ENV, "").split(",")}
    return LATEST_EXPERIMENTAL in values


def _version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("quota-hooks")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return None


def _error_type(record: UsageRecord) -> str:
    if record.error_type:
        return record.error_type
    return str(record.status_code) if record.status_code else "_OTHER"


def instrument(
    manager: QuotaManager,
    meter_provider: MeterProvider | None = None,
    *,
    workspace_attribute: bool = False,
    max_workspaces: int = 20,
    max_models: int = 50,
    max_pending: int = 2048,
    environ: Mapping[str, str] | None = None,
) -> Instrumentation:
    """Record OpenTelemetry GenAI metrics for every call ``manager`` records, and its limit
    decisions (see the module doc for the names).

    Args:
        manager: the manager to instrument (once: instrumenting it again is an error; call
            :meth:`Instrumentation.uninstrument` first).
        meter_provider: where the metrics go; the global one
            (``opentelemetry.metrics.get_meter_provider()``) when None.
        workspace_attribute: label the metrics with ``quota_hooks.workspace`` (and report the
            per-workspace gauges). Off by default: a workspace per user would be a series per
            user.
        max_workspaces: workspaces labelled by name (the first seen); the rest are ``other``.
        max_models: request and response models labelled by name; the rest are ``other``.
        max_pending: recorded calls that may wait for a collection before a background thread
            turns them into measurements.
        environ: where ``OTEL_SEMCONV_STABILITY_OPT_IN`` is read (``os.environ`` by default).

    Returns:
        The :class:`Instrumentation`: ``flush()`` feeds the instruments now,
        ``uninstrument()`` stops.

    Raises:
        ConfigurationError: a bad argument, named.
    """
    if not isinstance(manager, QuotaManager):
        raise ConfigurationError(f"manager must be a QuotaManager, got {manager!r}")
    if manager in _INSTRUMENTED:
        raise ConfigurationError(
            "manager is already instrumented: call uninstrument() on its Instrumentation first")
    if meter_provider is None:
        meter_provider = otel_metrics.get_meter_provider()
    elif not callable(getattr(meter_provider, "get_meter", None)):
        raise ConfigurationError(
            f"meter_provider must be an OpenTelemetry MeterProvider, got {meter_provider!r}")
    if not isinstance(workspace_attribute, bool):
        raise ConfigurationError(
            f"workspace_attribute must be True or False, got {workspace_attribute!r}")
    check_limit("max_workspaces", max_workspaces)
    check_limit("max_models", max_models)
    check_limit("max_pending", max_pending)
    latest = _latest(os.environ if environ is None else environ)
    instrumentation = Instrumentation(
        manager, meter_provider.get_meter("quota_hooks", _version()),
        workspace_attribute=workspace_attribute, max_workspaces=max_workspaces,
        max_models=max_models, max_pending=max_pending, latest=latest)
    manager.add_observer(instrumentation)
    manager.add_drainer(instrumentation)
    _INSTRUMENTED.add(manager)
    return instrumentation


class Instrumentation:
    """The OpenTelemetry metrics of one manager (made by :func:`instrument`).

    Attributes:
        manager: the manager instrumented.
        latest: True when the latest experimental GenAI names are emitted.
        workspace_attribute: True when metrics carry ``quota_hooks.workspace``.
    """

    def __init__(self, manager: QuotaManager, meter: Meter, *, workspace_attribute: bool,
                 max_workspaces: int, max_models: int, max_pending: int, latest: bool) -> None:
        self.manager = manager
        self.latest = latest
        self.workspace_attribute = workspace_attribute
        self.max_pending = max_pending
        self._workspaces = BoundedLabels(max_workspaces, "workspaces (quota_hooks.workspace)")
        self._models = BoundedLabels(max_models, "models (gen_ai.*.model)")
        self._operations = BoundedLabels(_SMALL_LIMIT, "operations (gen_ai.operation.name)")
        self._providers = BoundedLabels(_SMALL_LIMIT, "providers (gen_ai.provider.name)")
        self._errors = BoundedLabels(_SMALL_LIMIT, "error types (error.type)", other="_OTHER")
        self._tiers = BoundedLabels(_SMALL_LIMIT, "service tiers")
        self._servers = BoundedLabels(_SMALL_LIMIT, "servers (server.address)")
        self._attrs: dict[_Key, _Attrs] = {}
        self._pending: deque[_Pending] = deque()
        self._flush_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._requested: dict[str, str] = {}
        self._sums: dict[str, dict[tuple[_Key, str], list[Any]]] = {
            name: {} for name in (*_USAGE_COUNTERS, COST)}
        self._decisions: dict[tuple[str, str, str | None], list[Any]] = {}
        self._numbers: dict[str, WorkspaceNumbers] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failures = 0

        # Instruments. Every callback drains the queue first (see the module doc).
        self._duration = meter.create_histogram(
            OPERATION_DURATION, unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        if latest:
            self._op_input = meter.create_histogram(
                OPERATION_INPUT, unit="{token}",
                description="The number of input (prompt) tokens used per inference operation.",
                explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS))
            self._op_output = meter.create_histogram(
                OPERATION_OUTPUT, unit="{token}",
                description="The number of output (completion) tokens used per inference "
                            "operation.",
                explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS))
            briefs = {
                USAGE_INPUT: "The number of input (prompt) tokens used, including cached "
                             "tokens.",
                USAGE_OUTPUT: "The number of output (completion) tokens used, including "
                              "reasoning tokens.",
                USAGE_CACHE_READ: "The number of input tokens served from a provider-managed "
                                  "cache.",
                USAGE_CACHE_WRITE: "The number of input tokens written to a provider-managed "
                                   "cache.",
                USAGE_REASONING: "The number of output tokens used for reasoning.",
            }
            for name, brief in briefs.items():
                meter.create_observable_counter(
                    name, callbacks=[self._summed(name, float_usd=False)], unit="{token}",
                    description=brief)
        else:
            self._tokens = meter.create_histogram(
                TOKEN_USAGE, unit="{token}", description="Number of input and output tokens used.",
                explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS))
        meter.create_observable_counter(
            COST, callbacks=[self._summed(COST, float_usd=True)], unit="USD",
            description="What the calls cost, as quota-hooks priced them (calls without a "
                        "price are left out).")
        meter.create_observable_counter(
            DECISIONS, callbacks=[self._observe_decisions], unit="{decision}",
            description="Limit decisions on reservations: admitted, waited (admitted after "
                        "waiting) or refused.")
        if workspace_attribute:
            meter.create_observable_gauge(
                BUDGET_USED, callbacks=[self._observe_budget_used], unit="USD",
                description="The budget used in the current period, read from the store.")
            meter.create_observable_gauge(
                BUDGET_LIMIT, callbacks=[self._observe_budget_limit], unit="USD",
                description="The budget of the current period.")
            meter.create_observable_gauge(
                LIMIT_USAGE, callbacks=[self._observe_limit_usage], unit="1",
                description="The used fraction of each limit (1 is at the limit), read from "
                            "the store.")
            meter.create_observable_gauge(
                STATUS, callbacks=[self._observe_status], unit="1",
                description="The workspace's status: 1 for the current one, 0 for the others.")

    def __repr__(self) -> str:
        return (f"Instrumentation({self.manager!r}, latest={self.latest}, "
                f"workspace_attribute={self.workspace_attribute})")

    # ------------------------------------------------------------------ the observer
    def recorded(self, entry: UsageEntry, reservation: Reservation | None) -> None:
        """A call the manager counted (:class:`~quota_hooks.typing.Observer`): queued, to
        be measured at the next collection. Never raises."""
        if self._closed:
            return
        try:
            cost = entry.cost
            nanos = None if cost is None or cost > MAX_COST else to_nanos(cost)
            requested = None if reservation is None else self._requested.pop(
                reservation.id, None)
            self._pending.append((entry.record, requested, otel_context.get_current(), nanos))
            if len(self._pending) >= self.max_pending:
                self._wake_flusher()
        except Exception as exc:  # pragma: no cover - never break the caller's call
            self._failed(exc)

    def decided(self, workspace_id: str, estimate: Estimate, decision: Decision,
                limit: str | None, reservation: Reservation | None) -> None:
        """A decision of the manager's ``acquire`` (:class:`~quota_hooks.typing.Observer`):
        counted; an admitted call's requested model is kept for its record."""
        if self._closed:
            return
        self._decided(workspace_id, decision, limit)
        if reservation is None:
            return
        requested = self._requested
        with self._state_lock:
            if len(requested) >= _MAX_REMEMBERED:
                del requested[next(iter(requested))]
            requested[reservation.id] = estimate.model

    def _decided(self, workspace_id: str, decision: str, limit: str | None) -> None:
        workspace = self._workspaces(workspace_id) if self.workspace_attribute else ""
        metric = limit if limit in METRIC_NAMES else None
        key = (workspace, decision, metric)
        with self._state_lock:
            found = self._decisions.get(key)
            if found is None:
                attrs = {"quota_hooks.decision": decision}
                if metric is not None:
                    attrs["quota_hooks.metric"] = metric
                if self.workspace_attribute:
                    attrs[WORKSPACE] = workspace
                found = self._decisions[key] = [attrs, 0]
            found[1] += 1

    # ------------------------------------------------------------------ measurements
    def flush(self) -> None:
        """Turn every call recorded so far into measurements now (a collection does this
        by itself). Never raises: a failure is logged once and counted."""
        with self._flush_lock:
            pending = self._pending
            while pending:
                try:
                    item = pending.popleft()
                except IndexError:  # pragma: no cover - emptied by another thread
                    break
                try:
                    self._measure(*item)
                except Exception as exc:
                    self._failed(exc)

    def drain(self, timeout: float = 5.0) -> bool:
        """:meth:`flush` (``manager.drain()`` calls it: this is a registered drainer)."""
        self.flush()
        return True

    async def adrain(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - mirrors drain()
        """:meth:`flush` on a worker thread (``await manager.adrain()`` calls it)."""
        await anyio.to_thread.run_sync(self.flush)
        return True

    def _measure(self, record: UsageRecord, requested: str | None, context: Context,
                 nanos: int | None) -> None:
        success = record.success
        operation = _OPERATIONS.get(record.api_method) or self._operations(record.api_method)
        provider = self._providers(_PROVIDERS.get(record.provider, record.provider))
        request_model = self._models(requested or record.model)
        response_model = self._models(record.model) if success else ""
        error = "" if success else self._errors(_error_type(record))
        tier = self._tiers(record.service_tier) if (
            record.service_tier and provider == "openai") else ""
        workspace = self._workspaces(record.workspace_id) if self.workspace_attribute else ""
        server = self._servers(record.server_address) if record.server_address else ""
        key = (operation, provider, request_model, response_model, error, tier, workspace,
               server)
        attrs = self._attrs.get(key) or self._attributes(key)

        if record.latency_ms is not None:
            self._duration.record(record.latency_ms / 1000, attrs.duration, context=context)
        # Usage came back: the provider's counts (an estimate is not usage; a fetched
        # response's tokens were counted when it was made, the spec says not to report them).
        usage = not record.estimated and operation != "fetch_response" and (
            bool(record.input_tokens or record.output_tokens)
            or (success and operation in _TOKEN_OPERATIONS))
        outputs = bool(record.output_tokens) or operation != "embeddings"
        if self.latest:
            self._count_usage(record, attrs, operation, usage)
            if usage and success:
                self._op_input.record(record.input_tokens, attrs.base, context=context)
                if outputs:
                    self._op_output.record(record.output_tokens, attrs.base, context=context)
        elif usage and success:
            self._tokens.record(record.input_tokens, attrs.input, context=context)
            if outputs:
                self._tokens.record(record.output_tokens, attrs.output, context=context)
        if nanos:
            self._add(COST, attrs, "", nanos)

    def _count_usage(self, record: UsageRecord, attrs: _Attrs, operation: str,
                     usage: bool) -> None:
        """The latest conventions' usage counters: every call, failed ones too (0, modality
        ``unknown``, when no usage came back)."""
        if not usage:
            self._add(USAGE_INPUT, attrs, "unknown", 0)
            self._add(USAGE_OUTPUT, attrs, "unknown", 0)
            return
        base = "text" if operation in _TEXT_OPERATIONS else "unknown"
        for name, total, audio, image in (
            (USAGE_INPUT, record.input_tokens, record.audio_input_tokens,
             record.image_input_tokens),
            (USAGE_OUTPUT, record.output_tokens, record.audio_output_tokens,
             record.image_output_tokens),
        ):
            rest = max(0, total - audio - image)
            if rest or not (audio or image):
                self._add(name, attrs, base, rest)
            if audio:
                self._add(name, attrs, "audio", audio)
            if image:
                self._add(name, attrs, "image", image)
        generates = operation in ("chat", "text_completion")
        for name, value in ((USAGE_CACHE_READ, record.cached_input_tokens),
                            (USAGE_CACHE_WRITE, record.cache_write_tokens),
                            (USAGE_REASONING, record.reasoning_tokens)):
            if value or generates:
                self._add(name, attrs, base, value)

    def _add(self, name: str, attrs: _Attrs, modality: str, value: int) -> None:
        sums = self._sums[name]
        key = (attrs.key, modality)
        with self._state_lock:
            found = sums.get(key)
            if found is None:
                labels = dict(attrs.base)
                if modality:
                    labels["gen_ai.token.modality"] = modality
                found = sums[key] = [labels, 0]
            found[1] += value

    def _attributes(self, key: _Key) -> _Attrs:
        if len(self._attrs) >= _MAX_ATTRIBUTE_SETS:
            key = (OTHER, OTHER, OTHER, "", "", "", OTHER if self.workspace_attribute else "",
                   "")
            found = self._attrs.get(key)
            if found is not None:
                return found
        operation, provider, request_model, response_model, error, tier, workspace, server = key
        base: dict[str, str | int] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
            "gen_ai.request.model": request_model}
        if server:  # "host" or "host:port" (the port only when it is not the scheme's)
            host, colon, port = server.rpartition(":")
            if colon and port.isdigit() and (":" not in host or host.endswith("]")):
                base["server.address"], base["server.port"] = host, int(port)
            else:
                base["server.address"] = server
        if response_model:
            base["gen_ai.response.model"] = response_model
        if tier:
            base["openai.response.service_tier"] = tier
        if self.workspace_attribute:
            base[WORKSPACE] = workspace
        duration = dict(base)
        if error:
            duration["error.type"] = error
        attrs = _Attrs(key, base, duration, {**base, "gen_ai.token.type": "input"},
                       {**base, "gen_ai.token.type": "output"})
        self._attrs[key] = attrs
        return attrs

    # ------------------------------------------------------------------ observations
    def _summed(self, name: str, *, float_usd: bool) -> Callable[[CallbackOptions],
                                                                 Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            self.flush()
            with self._state_lock:
                rows = [(labels, total) for labels, total in self._sums[name].values()]
            for labels, total in rows:
                yield Observation(usd(total) if float_usd else total, labels)

        return observe

    def _observe_decisions(self, options: CallbackOptions) -> Iterator[Observation]:
        self.flush()
        with self._state_lock:
            rows = [(labels, total) for labels, total in self._decisions.values()]
        for labels, total in rows:
            yield Observation(total, labels)

    def _read_numbers(self) -> dict[str, WorkspaceNumbers]:
        """The labelled workspaces' numbers, read from the store (a failing workspace is
        left out and counted)."""
        numbers: dict[str, WorkspaceNumbers] = {}
        for workspace in self._workspaces.known():
            try:
                numbers[workspace] = read_numbers(self.manager, workspace)
            except Exception as exc:
                self._failed(exc)
        self._numbers = numbers
        return numbers

    def _observe_budget_used(self, options: CallbackOptions) -> Iterator[Observation]:
        # The first gauge of a collection reads the store; the other three reuse its read.
        self.flush()
        for workspace, numbers in self._read_numbers().items():
            for period, budget in numbers.budgets.items():
                yield Observation(usd(budget.used_nanos),
                                  {WORKSPACE: workspace, "quota_hooks.period": period})

    def _observe_budget_limit(self, options: CallbackOptions) -> Iterator[Observation]:
        for workspace, numbers in (self._numbers or self._read_numbers()).items():
            for period, budget in numbers.budgets.items():
                if budget.limit is not None:
                    yield Observation(float(budget.limit),
                                      {WORKSPACE: workspace, "quota_hooks.period": period})

    def _observe_limit_usage(self, options: CallbackOptions) -> Iterator[Observation]:
        for workspace, numbers in (self._numbers or self._read_numbers()).items():
            for metric, ratio in numbers.ratios.items():
                yield Observation(ratio, {WORKSPACE: workspace, "quota_hooks.metric": metric})

    def _observe_status(self, options: CallbackOptions) -> Iterator[Observation]:
        for workspace, numbers in (self._numbers or self._read_numbers()).items():
            for status in QuotaStatus:
                yield Observation(int(numbers.status is status),
                                  {WORKSPACE: workspace, STATUS: status.value})

    # ------------------------------------------------------------------ background flushing
    def _wake_flusher(self) -> None:
        if self._closed:
            return
        if self._thread is None:
            with self._state_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._flush_loop,
                                                    name="quota-hooks-otel", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            self.flush()

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == 1:
            logger.warning("quota-hooks: OpenTelemetry metrics failed (logged once): %r", exc)

    @property
    def failures(self) -> int:
        """How many failures inside the instrumentation were caught (never raised)."""
        return self._failures

    # ------------------------------------------------------------------ stopping
    def uninstrument(self) -> None:
        """Stop observing the manager; calls already recorded are still measured. The
        instruments stay registered (OpenTelemetry cannot remove them) and keep reporting
        their totals."""
        self.manager.remove_observer(self)
        _INSTRUMENTED.discard(self.manager)
        self._closed = True
        self._wake.set()
        self.flush()
