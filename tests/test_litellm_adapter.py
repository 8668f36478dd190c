"""The LiteLLM adapter, driven through the real `litellm` package offline."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import litellm
import pytest

from quota_hooks import ConfigurationError, QuotaManager, QuotaPolicy, QuotaStatus, UsageRecord
from quota_hooks.adapters.litellm import QuotaLogger
from quota_hooks.testing import FakeOpenAI, FakeUsage, ManualClock

MSG = [{"role": "user", "content": "hello"}]
@pytest.fixture(autouse=True)
def _clean(clean_litellm_callbacks: None) -> None:
    """Every test here starts and ends with litellm's callback lists as they were."""


@pytest.fixture
def manager(clock: ManualClock) -> QuotaManager:
    return QuotaManager(QuotaPolicy.unlimited(), clock=clock)


@pytest.fixture
def logger(manager: QuotaManager) -> QuotaLogger:
    quota_logger = QuotaLogger(manager=manager, default_workspace="ws")
    litellm.callbacks = [quota_logger]
    return quota_logger


def records(manager: QuotaManager, ws: str = "ws") -> list[UsageRecord]:
    return list(reversed(manager.store.recent(f"workspace:{ws}", 100)))


def rate_limit_error() -> Exception:
    return litellm.RateLimitError(message="slow down", llm_provider="openai", model="gpt-4o-mini")


def test_the_server_address_is_the_api_base_host(manager: QuotaManager,
                                                 logger: QuotaLogger) -> None:
    with FakeOpenAI(FakeUsage(input_tokens=9, output_tokens=4)).serve() as base_url:
        litellm.completion(model="openai/gpt-4o-mini", api_base=base_url, api_key="sk-test",
                           messages=MSG)
    assert manager.drain()
    [record] = records(manager)
    host_port = base_url.split("//", 1)[1].split("/", 1)[0]
    assert record.server_address == host_port and host_port.startswith("127.0.0.1:")
    assert (record.input_tokens, record.output_tokens) == (9, 4)


def test_sync_completion(manager: QuotaManager, logger: QuotaLogger) -> None:
    response = litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="hi there",
                                  metadata={"workspace_id": "acme", "tags": ["team:ml", "x"]},
                                  user="u-1")
    assert manager.drain()
    [record] = records(manager, "acme")
    assert (record.input_tokens, record.output_tokens) == (
        response.usage.prompt_tokens, response.usage.completion_tokens)
    assert record.api_method == "chat.completions" and record.provider == "openai"
    assert record.source == "litellm" and record.success and not record.stream
    assert record.scopes == {"team": "ml", "user": "u-1"} and record.tags == ("team:ml", "x")
    # Priced by the price book, as a call any adapter saw; litellm's figure is kept.
    assert record.price_source is not None and record.price_source.startswith("genai-prices")
    assert record.cost == manager.prices.cost(record.with_cost(None, None)).usd
    litellm_cost = Decimal(repr(response._hidden_params["response_cost"]))
    assert record.reported_cost is not None
    assert abs(record.reported_cost - litellm_cost) < Decimal("1e-12")


def test_cost_source_litellm_keeps_litellms_price(manager: QuotaManager) -> None:
    litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="ws",
                                     cost_source="litellm")]
    response = litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="hi there")
    assert manager.drain()
    [record] = records(manager)
    assert record.price_source == "litellm"
    litellm_cost = Decimal(repr(response._hidden_params["response_cost"]))
    assert record.cost is not None and abs(record.cost - litellm_cost) < Decimal("1e-12")
    with pytest.raises(ConfigurationError, match="cost_source"):
        QuotaLogger(manager=manager, cost_source="mine")  # type: ignore[arg-type]


def test_a_cost_that_differs_from_litellms_is_said_once_per_model(
    manager: QuotaManager, caplog: pytest.LogCaptureFixture
) -> None:
    litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="ws")]
    with caplog.at_level("WARNING", "quota_hooks"):
        for _ in range(3):
            manager.record(UsageRecord(workspace_id="ws", model="gpt-4o", input_tokens=1_000,
                                       source="litellm", reported_cost=Decimal("1")))
    assert sum("reported 1 for a" in r.getMessage() for r in caplog.records) == 1


async def test_async_completion_and_drain(manager: QuotaManager, logger: QuotaLogger) -> None:
    response = await litellm.acompletion(model="gpt-4o-mini", messages=MSG, mock_response="hey")
    assert await manager.adrain()
    [record] = records(manager)
    assert record.total_tokens == response.usage.total_tokens
    assert record.workspace_id == "ws"  # the default_workspace


def test_sync_stream_is_recorded_once_at_its_end(
    manager: QuotaManager, logger: QuotaLogger
) -> None:
    chunks = list(litellm.completion(model="gpt-4o-mini", messages=MSG,
                                     mock_response="one two three", stream=True))
    assert chunks
    assert manager.drain()
    [record] = records(manager)
    assert record.stream and record.output_tokens > 0


async def test_async_stream(manager: QuotaManager, logger: QuotaLogger) -> None:
    stream = await litellm.acompletion(model="gpt-4o-mini", messages=MSG,
                                       mock_response="one two three", stream=True)
    async for _ in stream:
        pass
    assert await manager.adrain()
    [record] = records(manager)
    assert record.stream and record.input_tokens > 0


def test_embeddings(manager: QuotaManager, logger: QuotaLogger) -> None:
    response = litellm.embedding(model="text-embedding-3-small", input=["a", "b"],
                                 mock_response=[0.1, 0.2])
    assert manager.drain()
    [record] = records(manager)
    assert record.api_method == "embeddings"
    assert record.input_tokens == response.usage.prompt_tokens > 0
    assert record.total_tokens == record.input_tokens


def test_failures_and_429(manager: QuotaManager, logger: QuotaLogger) -> None:
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response=rate_limit_error())
    with pytest.raises(litellm.InternalServerError):
        litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response=Exception("boom"))
    assert manager.drain()
    got = records(manager)
    assert sorted((r.success, r.status_code, r.error_type) for r in got) == [
        (False, 429, "RateLimitError"), (False, 500, "InternalServerError")]
    assert all(r.total_tokens == 0 for r in got)
    assert manager.status("ws").status is QuotaStatus.RATE_LIMITED


async def test_async_failure_once_despite_retries(
    manager: QuotaManager, logger: QuotaLogger
) -> None:
    with pytest.raises(litellm.RateLimitError):
        await litellm.acompletion(model="gpt-4o-mini", messages=MSG, num_retries=2,
                                  mock_response=rate_limit_error())
    assert await manager.adrain()
    got = records(manager)
    assert len(got) == 1 and got[0].status_code == 429


def test_a_failure_seen_twice_is_recorded_once(manager: QuotaManager, logger: QuotaLogger) -> None:
    kwargs = {"litellm_call_id": "call-1", "exception": rate_limit_error(),
              "standard_logging_object": {"model": "gpt-4o-mini", "call_type": "completion"}}
    logger.log_failure_event(kwargs, None, None, None)
    logger.log_failure_event(kwargs, None, None, None)
    assert len(records(manager)) == 1


def test_plain_function_form(manager: QuotaManager) -> None:
    quota_logger = QuotaLogger(manager=manager, default_workspace="ws")
    litellm.success_callback = [quota_logger.success_callback,
                                quota_logger.async_success_callback]
    litellm.failure_callback = [quota_logger.failure_callback]
    litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="hi")
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response=rate_limit_error())
    assert manager.drain()
    # litellm runs the callbacks in a thread pool: the order of the two records is not fixed
    assert sorted(r.success for r in records(manager)) == [False, True]
    # A stream: litellm calls the function for every chunk too; the call is recorded once,
    # at its end, with its real usage (each chunk used to count as a call at 1,024 tokens).
    for _ in litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="one two three",
                                stream=True):
        pass
    assert manager.drain()
    [streamed] = [r for r in records(manager) if r.stream]
    assert not streamed.estimated and streamed.output_tokens < 10


async def test_plain_function_form_counts_async_calls(manager: QuotaManager) -> None:
    # litellm calls a sync success function for sync calls only: acompletion (plain, streamed,
    # failed) used to go uncounted in the plain form. Failures reach the sync function once.
    quota_logger = QuotaLogger(manager=manager, default_workspace="ws")
    litellm.success_callback = [quota_logger.success_callback,
                                quota_logger.async_success_callback]
    litellm.failure_callback = [quota_logger.failure_callback]
    await litellm.acompletion(model="gpt-4o-mini", messages=MSG, mock_response="hi")
    stream = await litellm.acompletion(model="gpt-4o-mini", messages=MSG,
                                       mock_response="one two three", stream=True)
    async for _ in stream:
        pass
    with pytest.raises(litellm.RateLimitError):
        await litellm.acompletion(model="gpt-4o-mini", messages=MSG,
                                  mock_response=rate_limit_error())
    for _ in range(100):  # litellm logs from its own tasks and threads, after the call
        await manager.adrain()
        if len(records(manager)) >= 3:
            break
        await anyio.sleep(0.02)
    got = records(manager)
    assert sorted((r.stream, r.success) for r in got) == [(False, False), (False, True),
                                                          (True, True)]
    [streamed] = [r for r in got if r.stream]
    assert not streamed.estimated and streamed.output_tokens < 10
    assert manager.status("ws", enhanced=False).requests_per_day.current == 3


def test_plain_function_form_with_one_half_warns(
    manager: QuotaManager, caplog: pytest.LogCaptureFixture
) -> None:
    quota_logger = QuotaLogger(manager=manager, default_workspace="ws")
    litellm.success_callback = [quota_logger.success_callback]
    with caplog.at_level("WARNING", logger="quota_hooks"):
        litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="hi")
        litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="hi")
        assert manager.drain()
    warned = [r.getMessage() for r in caplog.records if "async_success_callback" in
              r.getMessage()]
    assert len(warned) == 1 and "async calls are not counted" in warned[0]
    assert len(records(manager)) == 2


def test_callback_errors_are_counted_not_dropped(
    manager: QuotaManager, logger: QuotaLogger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: Any, **kwargs: Any) -> UsageRecord:
        raise ValueError("unexpected payload")

    monkeypatch.setattr(logger, "to_record", explode)
    litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="hi")
    assert manager.drain()
    assert manager.tracking_errors == 1
    assert manager.status("default", enhanced=False).status is QuotaStatus.DEGRADED


def test_real_usage_and_cost_over_a_loopback_server(
    manager: QuotaManager, logger: QuotaLogger
) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=1_200, output_tokens=300, cached_tokens=1_024,
                                reasoning_tokens=100))
    with fake.serve() as base_url:
        response = litellm.completion(model="openai/gpt-4o-mini", messages=MSG,
                                      api_base=base_url, api_key="sk-test")
        assert manager.drain()
    [record] = records(manager)
    assert (record.input_tokens, record.cached_input_tokens) == (1_200, 1_024)
    assert (record.output_tokens, record.reasoning_tokens) == (300, 100)
    litellm_cost = Decimal(repr(response._hidden_params["response_cost"]))
    assert abs(litellm_cost - Decimal("0.0002832")) < Decimal("1e-15")  # a float sum
    ours = manager.prices.cost(
        UsageRecord(model=record.model, input_tokens=1_200, cached_input_tokens=1_024,
                    output_tokens=300, reasoning_tokens=100)).usd
    # 176 x 0.15 + 1024 x 0.075 + 300 x 0.60 per 1M
    assert ours == Decimal("0.0002832") == record.cost  # the float noise is gone


def test_importing_the_adapter_opens_no_socket() -> None:
    import subprocess
    import sys

    code = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise AssertionError(f'network access: {a}')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import quota_hooks.adapters.litellm\n"
        "print('ok')\n"
    )
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_usage_it_cannot_trust_settles_at_the_workspaces_estimate(clock: ManualClock) -> None:
    """A provider whose usage says nothing (nulls) over the wire: the call is counted at the
    estimate the manager makes for the workspace that pays (its default_max_tokens), not 0."""
    manager = QuotaManager(QuotaPolicy.unlimited(), clock=clock)
    manager.set_policy("acme", QuotaPolicy.unlimited().model_copy(
        update={"default_max_tokens": 321}))
    litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="ws")]
    fake = FakeOpenAI(raw_usage={"prompt_tokens": None, "completion_tokens": None,
                                 "total_tokens": None})
    with fake.serve() as base_url:
        litellm.completion(model="openai/gpt-4o-mini", messages=MSG * 40, api_base=base_url,
                           api_key="sk-test", metadata={"workspace_id": "acme"})
        assert manager.drain()
    [record] = records(manager, "acme")
    assert record.estimated and record.estimate_reason
    assert record.output_tokens == 321  # the paying workspace's policy, not the default's
    assert record.input_tokens > 40  # from the size of the 40 messages sent
    assert manager.status("acme").tokens_per_day.current == record.total_tokens
