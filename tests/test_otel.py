"""quota_hooks.otel: the OpenTelemetry SDK's InMemoryMetricReader sees the exact token counts
and attributes of calls made through the real openai, litellm and langchain-core packages
(offline), the opt-in switches to the latest names, and cardinality stays bounded."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx2
import litellm
import openai
import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from quota_hooks import (
    ConfigurationError,
    QuotaExceededError,
    QuotaManager,
    QuotaPolicy,
    RateLimitedError,
    UsageRecord,
)
from quota_hooks.adapters.langchain import QuotaCallbackHandler
from quota_hooks.adapters.litellm import QuotaLogger
from quota_hooks.adapters.openai import track_openai
from quota_hooks.otel import DURATION_BUCKETS, TOKEN_BUCKETS, Instrumentation, instrument
from quota_hooks.pricing import from_nanos, to_nanos
from quota_hooks.testing import FakeOpenAI, FakeUsage, ManualClock
from quota_hooks.usage import Estimate

MSG = [{"role": "user", "content": "hello"}]
LATEST = {"OTEL_SEMCONV_STABILITY_OPT_IN": "http,gen_ai_latest_experimental"}


class Seen:
    """What an InMemoryMetricReader collected, by metric name: ``[(attributes, point)]``."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        self.units: dict[str, str] = {}
        data = reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "quota_hooks"
                for metric in scope.metrics:
                    self.units[metric.name] = metric.unit or ""
                    self.points[metric.name] = [(dict(p.attributes or {}), p)
                                                for p in metric.data.data_points]

    def names(self) -> set[str]:
        return set(self.points)

    def where(self, name: str, **attrs: Any) -> list[Any]:
        """The points of ``name`` whose attributes include ``attrs`` (dots as ``__``)."""
        wanted = {k.replace("__", "."): v for k, v in attrs.items()}
        return [p for a, p in self.points.get(name, []) if wanted.items() <= a.items()]

    def one(self, name: str, **attrs: Any) -> Any:
        found = self.where(name, **attrs)
        assert len(found) == 1, (name, attrs, self.points.get(name))
        return found[0]

    def attributes(self, name: str) -> list[dict[str, Any]]:
        return [a for a, _ in self.points.get(name, [])]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def manager(clock: ManualClock) -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(), clock=clock)
    yield manager
    manager.close()


def stored(manager: QuotaManager, ws: str = "ws") -> list[UsageRecord]:
    return list(reversed(manager.store.recent(f"workspace:{ws}", 100)))


def openai_client(fake: FakeOpenAI, manager: QuotaManager, *, max_retries: int = 0) -> Any:
    raw = openai.OpenAI(api_key="sk-test", base_url="http://fake.test/v1",
                        http_client=httpx2.Client(transport=fake.transport()),
                        max_retries=max_retries)
    return track_openai(raw, workspace_id="ws", manager=manager)


# ---------------------------------------------------------------------- the default names
def test_openai_calls_give_the_exact_token_counts_and_attributes(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    instrument(manager, provider, environ={})
    fake = FakeOpenAI(FakeUsage(input_tokens=12, output_tokens=5, cached_tokens=4,
                                reasoning_tokens=2))
    client = openai_client(fake, manager)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    seen = Seen(reader)

    # The model asked for, and the one that answered (FakeOpenAI answers with a snapshot, as
    # OpenAI does); the OpenAI SDK at an unknown host is the spec's "openai" flavor.
    response_model = stored(manager)[0].model
    assert response_model == "gpt-4o-mini-2024-07-18"
    chat = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": response_model,
            "openai.response.service_tier": "default", "server.address": "fake.test"}
    assert {**chat, "gen_ai.token.type": "input"} in seen.attributes("gen_ai.client.token.usage")
    tokens_in = seen.one("gen_ai.client.token.usage", gen_ai__operation__name="chat",
                         gen_ai__token__type="input")
    tokens_out = seen.one("gen_ai.client.token.usage", gen_ai__operation__name="chat",
                          gen_ai__token__type="output")
    assert (tokens_in.count, tokens_in.sum, tokens_in.min, tokens_in.max) == (2, 24, 12, 12)
    assert (tokens_out.count, tokens_out.sum) == (2, 10)
    assert tuple(tokens_in.explicit_bounds) == TOKEN_BUCKETS
    embedded = seen.one("gen_ai.client.token.usage", gen_ai__operation__name="embeddings")
    assert embedded.attributes["gen_ai.token.type"] == "input"  # embeddings have no output
    assert (embedded.count, embedded.sum) == (1, 12)
    assert seen.units["gen_ai.client.token.usage"] == "{token}"

    duration = seen.one("gen_ai.client.operation.duration", gen_ai__operation__name="chat")
    assert duration.count == 2 and "error.type" not in duration.attributes
    assert tuple(duration.explicit_bounds) == DURATION_BUCKETS
    assert seen.units["gen_ai.client.operation.duration"] == "s"
    latencies = [r.latency_ms for r in stored(manager) if r.api_method == "chat.completions"]
    assert duration.sum == pytest.approx(sum(latencies) / 1000)
    # Workspace is opt-in: no attribute names it.
    assert not any("quota_hooks.workspace" in a for a in seen.attributes(
        "gen_ai.client.token.usage"))

    # The cost the store charged, in dollars only at export.
    nanos = sum(to_nanos(r.cost) for r in stored(manager) if r.cost is not None)
    total = sum(p.value for _, p in seen.points["quota_hooks.cost"])
    assert nanos > 0 and total == pytest.approx(float(from_nanos(nanos)), abs=1e-15)
    assert seen.units["quota_hooks.cost"] == "USD"


def test_server_address_and_port_come_from_the_request(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    instrument(manager, provider, environ={})
    fake = FakeOpenAI(FakeUsage(input_tokens=7, output_tokens=3))
    with fake.serve() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        client = track_openai(openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0),
                              workspace_id="ws", manager=manager)
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert stored(manager)[0].server_address == f"127.0.0.1:{port}"
    point = Seen(reader).one("gen_ai.client.token.usage", gen_ai__token__type="input")
    assert point.sum == 7
    attributes = Seen(reader).attributes("gen_ai.client.operation.duration")[0]
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", port)


def test_a_failed_call_has_error_type_and_no_token_usage(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    instrument(manager, provider, environ={})
    fake = FakeOpenAI()
    client = openai_client(fake, manager)
    fake.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    [record] = stored(manager)
    seen = Seen(reader)
    failed = seen.one("gen_ai.client.operation.duration", gen_ai__operation__name="chat")
    assert failed.attributes["error.type"] == record.error_type
    assert "gen_ai.response.model" not in failed.attributes
    assert "gen_ai.client.token.usage" not in seen.names()


def test_litellm_calls_give_the_exact_token_counts(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader,
    clean_litellm_callbacks: None,
) -> None:
    instrument(manager, provider, environ={})
    litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="ws")]
    response = litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="hi there")
    assert manager.drain()
    seen = Seen(reader)
    tokens_in = seen.one("gen_ai.client.token.usage", gen_ai__token__type="input")
    tokens_out = seen.one("gen_ai.client.token.usage", gen_ai__token__type="output")
    assert tokens_in.sum == response.usage.prompt_tokens > 0
    assert tokens_out.sum == response.usage.completion_tokens > 0
    assert tokens_in.attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.token.type": "input"}


def test_langchain_calls_give_the_exact_token_counts(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    instrument(manager, provider, environ={})
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    usage = {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}
    message = AIMessage(content="fine", usage_metadata=usage,  # type: ignore[arg-type]
                        response_metadata={"model_name": "claude-haiku-4-5"})
    model = GenericFakeChatModel(messages=iter([message]))
    model.invoke("hi", config={"callbacks": [handler]})
    [record] = stored(manager)
    seen = Seen(reader)
    tokens_in = seen.one("gen_ai.client.token.usage", gen_ai__token__type="input")
    tokens_out = seen.one("gen_ai.client.token.usage", gen_ai__token__type="output")
    assert (tokens_in.sum, tokens_out.sum) == (11, 7)
    assert tokens_in.attributes["gen_ai.response.model"] == "claude-haiku-4-5"
    assert tokens_in.attributes["gen_ai.provider.name"] == record.provider
    assert tokens_in.attributes["gen_ai.operation.name"] == "chat"


def test_estimated_usage_is_not_reported_as_token_usage(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    # The spec: without the provider's count (and no offline counting asked for), an
    # instrumentation MUST NOT report token usage.
    instrument(manager, provider, environ={})
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=40,
                               output_tokens=1024, estimated=True, latency_ms=5))
    seen = Seen(reader)
    assert "gen_ai.client.token.usage" not in seen.names()
    assert seen.one("gen_ai.client.operation.duration").count == 1


# ---------------------------------------------------------------------- the opt-in
def test_the_latest_experimental_opt_in_switches_the_names(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    otel = instrument(manager, provider, environ=LATEST)
    assert otel.latest
    fake = FakeOpenAI(FakeUsage(input_tokens=30, output_tokens=9, cached_tokens=8,
                                reasoning_tokens=3, cache_write_tokens=5))
    client = openai_client(fake, manager)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    fake.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    [ok, failed] = stored(manager)
    seen = Seen(reader)

    assert "gen_ai.client.token.usage" not in seen.names()  # the old name is not emitted
    assert {"gen_ai.client.operation.duration",
            "gen_ai.client.inference.usage.input_tokens",
            "gen_ai.client.inference.usage.output_tokens",
            "gen_ai.client.inference.usage.cache_read.input_tokens",
            "gen_ai.client.inference.usage.cache_write.input_tokens",
            "gen_ai.client.inference.usage.reasoning.output_tokens",
            "gen_ai.client.inference.operation.input_tokens",
            "gen_ai.client.inference.operation.output_tokens"} <= seen.names()
    usage = "gen_ai.client.inference.usage."
    text = {"gen_ai__token__modality": "text", "gen_ai__response__model": ok.model}
    assert seen.one(usage + "input_tokens", **text).value == ok.input_tokens == 30
    assert seen.one(usage + "output_tokens", **text).value == 9
    assert seen.one(usage + "cache_read.input_tokens", **text).value == ok.cached_input_tokens
    assert seen.one(usage + "cache_write.input_tokens", **text).value == ok.cache_write_tokens
    assert seen.one(usage + "reasoning.output_tokens", **text).value == 3
    # The failed call is counted, at 0 with modality unknown (no usage came back) ...
    unknown = seen.one(usage + "input_tokens", gen_ai__token__modality="unknown")
    assert unknown.value == 0 and not failed.success
    # ... but not in the per-operation histograms, which count successful operations only.
    per_op = seen.one("gen_ai.client.inference.operation.input_tokens")
    assert (per_op.count, per_op.sum) == (1, 30)
    assert "gen_ai.token.modality" not in per_op.attributes
    assert tuple(per_op.explicit_bounds) == TOKEN_BUCKETS
    assert seen.one("gen_ai.client.inference.operation.output_tokens").sum == 9


def test_the_opt_in_is_read_from_the_environment(
    manager: QuotaManager, provider: MeterProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    assert instrument(manager, provider).latest
    other = QuotaManager()
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    assert not instrument(other, provider).latest


def test_modalities_split_audio_and_image_tokens(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    instrument(manager, provider, environ=LATEST)
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-audio-preview",
                               input_tokens=100, audio_input_tokens=60, image_input_tokens=25,
                               output_tokens=40, audio_output_tokens=30))
    seen = Seen(reader)
    name = "gen_ai.client.inference.usage.input_tokens"
    assert {a["gen_ai.token.modality"]: p.value for a, p in seen.points[name]} == {
        "text": 15, "audio": 60, "image": 25}
    name = "gen_ai.client.inference.usage.output_tokens"
    assert {a["gen_ai.token.modality"]: p.value for a, p in seen.points[name]} == {
        "text": 10, "audio": 30}


# ---------------------------------------------------------------------- our namespace
def test_money_is_summed_in_nano_dollars_and_converted_at_export(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    instrument(manager, provider, environ={})
    for _ in range(3):
        manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=1,
                                   cost=Decimal("0.1")))
    seen = Seen(reader)
    assert 0.1 + 0.1 + 0.1 != 0.3  # what float running totals would report
    assert seen.one("quota_hooks.cost").value == 0.3


def test_limit_decisions_admitted_waited_refused(
    clock: ManualClock, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    manager = QuotaManager(QuotaPolicy(rpm=1, max_wait=120), clock=clock)  # rpm waits
    instrument(manager, provider, environ={})
    manager.sleep = clock.sleep  # replaced after instrument(): waits are still seen
    estimate = Estimate(model="gpt-4o-mini", input_tokens=10, output_tokens=5)
    first = manager.acquire("ws", estimate)
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini-2024-07-18",
                               input_tokens=9, output_tokens=4), first)
    manager.acquire("ws", estimate)  # waits for the minute to free up
    with pytest.raises(RateLimitedError):
        manager.acquire("ws", estimate, wait=False)
    seen = Seen(reader)
    decisions = {(a["quota_hooks.decision"], a.get("quota_hooks.metric")): p.value
                 for a, p in seen.points["quota_hooks.limit.decisions"]}
    assert decisions == {("admitted", None): 1, ("waited", None): 1, ("refused", "rpm"): 1}
    # The model the call asked for is the request model; the record's is the response's.
    point = seen.one("gen_ai.client.token.usage", gen_ai__token__type="input")
    assert point.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert point.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"


async def test_async_paths_are_measured(
    clock: ManualClock, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    manager = QuotaManager(QuotaPolicy(tpm=100, max_wait=120), clock=clock)
    manager.asleep = clock.asleep
    instrument(manager, provider, environ={})
    estimate = Estimate(model="gpt-4o-mini", input_tokens=80)
    first = await manager.aacquire("ws", estimate)
    await manager.arecord(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=80),
                          first)
    await manager.aacquire("ws", estimate)  # waits
    with pytest.raises(QuotaExceededError):
        await manager.aacquire("ws", Estimate(model="gpt-4o-mini", input_tokens=500))
    assert await manager.adrain()
    seen = Seen(reader)
    decisions = {a["quota_hooks.decision"]: p.value
                 for a, p in seen.points["quota_hooks.limit.decisions"]}
    assert decisions == {"admitted": 1, "waited": 1, "refused": 1}
    assert seen.one("gen_ai.client.token.usage", gen_ai__token__type="input").sum == 80


def test_workspace_gauges_read_the_store(
    clock: ManualClock, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    manager = QuotaManager(QuotaPolicy(rpm=10, monthly_budget_usd=Decimal("0.3")), clock=clock)
    instrument(manager, provider, workspace_attribute=True, environ={})
    for _ in range(3):
        manager.record(UsageRecord(workspace_id="acme", model="gpt-4o-mini",
                                   input_tokens=1, cost=Decimal("0.1")))
    seen = Seen(reader)
    where = {"quota_hooks__workspace": "acme", "quota_hooks__period": "month"}
    assert seen.one("quota_hooks.budget.used", **where).value == 0.3
    assert seen.one("quota_hooks.budget.limit", **where).value == 0.3
    usage = {a["quota_hooks.metric"]: p.value
             for a, p in seen.points["quota_hooks.limit.usage"]}
    assert usage["rpm"] == 0.3 and usage["monthly_budget_usd"] == 1.0
    status = {a["quota_hooks.status"]: p.value for a, p in seen.points["quota_hooks.status"]}
    assert status == {"normal": 0, "warning": 0, "rate_limited": 0, "quota_exceeded": 1,
                      "degraded": 0}
    assert seen.one("gen_ai.client.token.usage", gen_ai__token__type="input").attributes[
        "quota_hooks.workspace"] == "acme"


def test_workspaces_and_models_are_capped(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instrument(manager, provider, workspace_attribute=True, max_workspaces=2, max_models=2,
               environ={})
    for i in range(6):
        manager.record(UsageRecord(workspace_id=f"ws-{i}", model=f"model-{i}", input_tokens=10,
                                   output_tokens=1))
    seen = Seen(reader)
    points = seen.points["gen_ai.client.token.usage"]
    assert {a["quota_hooks.workspace"] for a, _ in points} == {"ws-0", "ws-1", "other"}
    assert {a["gen_ai.request.model"] for a, _ in points} == {"model-0", "model-1", "other"}
    other = seen.one("gen_ai.client.token.usage", quota_hooks__workspace="other",
                     gen_ai__token__type="input")
    assert (other.count, other.sum) == (4, 40)
    assert {a["quota_hooks.workspace"] for a in seen.attributes("quota_hooks.status")} == {
        "ws-0", "ws-1"}  # no gauge for "other"
    assert "more than 2 workspaces" in caplog.text


# ---------------------------------------------------------------------- life cycle, errors
def test_bad_arguments_are_named(manager: QuotaManager, provider: MeterProvider) -> None:
    with pytest.raises(ConfigurationError, match="manager must be a QuotaManager"):
        instrument("manager", provider)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="meter_provider"):
        instrument(manager, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="workspace_attribute"):
        instrument(manager, provider, workspace_attribute="yes")  # type: ignore[arg-type]
    for name in ("max_workspaces", "max_models", "max_pending"):
        with pytest.raises(ConfigurationError, match=f"{name} must be a whole number >= 1"):
            instrument(manager, provider, **{name: 0})
    otel = instrument(manager, provider)
    with pytest.raises(ConfigurationError, match="already instrumented"):
        instrument(manager, provider)
    otel.uninstrument()
    instrument(manager, provider).uninstrument()


def test_uninstrument_stops_observing(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    before = dict(vars(manager))
    otel = instrument(manager, provider, environ={})
    assert isinstance(otel, Instrumentation)
    with pytest.raises(ConfigurationError, match="already instrumented"):
        instrument(manager, provider, environ={})
    # An observer of the manager: none of its methods is replaced.
    assert {k for k, v in vars(manager).items() if before.get(k) is not v} == {"_observers"}
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=3))
    otel.uninstrument()
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=5))
    seen = Seen(reader)
    assert seen.one("gen_ai.client.token.usage", gen_ai__token__type="input").sum == 3
    instrument(manager, provider, environ={}).uninstrument()  # may be instrumented again


def test_a_failure_inside_the_instrumentation_never_reaches_the_call(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    otel = instrument(manager, provider, environ={})

    def broken(*args: Any) -> Any:
        raise RuntimeError("instruments on fire")

    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=3))
    monkeypatch.setattr(otel, "_measure", broken)
    reader.get_metrics_data()  # the collection measures the call and catches the failure
    assert otel.failures == 1 and "instruments on fire" in caplog.text
    assert len(stored(manager)) == 1


def test_an_observer_that_raises_never_breaks_the_call(manager: QuotaManager) -> None:
    class Broken:
        def recorded(self, entry: Any, reservation: Any) -> None:
            raise RuntimeError("observer on fire")

        def decided(self, *args: Any) -> None:
            raise RuntimeError("observer on fire")

    manager.add_observer(Broken())
    held = manager.acquire("ws", Estimate(model="gpt-4o-mini", input_tokens=3,
                                          output_tokens=0))
    manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=3), held)
    assert len(stored(manager)) == 1 and manager.tracking_errors == 2


def test_a_full_queue_is_measured_in_the_background(
    manager: QuotaManager, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    otel = instrument(manager, provider, max_pending=10, environ={})
    for _ in range(25):
        manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=2))
    assert manager.drain()  # a registered drainer: flushes what the thread has not
    seen = Seen(reader)
    assert seen.one("gen_ai.client.token.usage", gen_ai__token__type="input").count == 25
    otel.uninstrument()
