"""Usage a provider gets wrong (null, NaN, negative, a string, 2**63, reasoning above the
completion) never settles a call at 0: one rule (``usage.reported_usage``) in every adapter
settles it at its estimate, says so on the record, and the budget holds."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import httpx2
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_core.outputs import LLMResult

from quota_hooks import QuotaExceededError, QuotaManager, QuotaPolicy
from quota_hooks.adapters.langchain import QuotaCallbackHandler
from quota_hooks.adapters.openai import track_openai
from quota_hooks.testing import FakeOpenAI, FakeUsage
from quota_hooks.usage import Estimate, reported_usage

EST = Estimate(model="gpt-4o-mini", input_tokens=40, output_tokens=200)
GOOD = {"input_tokens": 120, "output_tokens": 30, "cached_input_tokens": 100,
        "reasoning_tokens": 10}


@pytest.mark.parametrize(
    ("reported", "tokens", "reason"),
    [
        (GOOD, (120, 30), None),
        ({**GOOD, "total_tokens": 150}, (120, 30), None),
        ({"input_tokens": 120, "output_tokens": None}, (120, 200), "output_tokens=null"),
        ({"input_tokens": None, "output_tokens": 30}, (40, 200), "input_tokens=null"),
        ({"input_tokens": None, "output_tokens": None}, (40, 200), "no usage reported"),
        (None, (40, 200), "no usage reported"),
        ({}, (40, 200), "no usage reported"),
        ({"input_tokens": math.nan, "output_tokens": 30}, (40, 200), "input_tokens=nan"),
        ({"input_tokens": -5, "output_tokens": 30}, (40, 200), "input_tokens=-5"),
        ({"input_tokens": "120", "output_tokens": 30}, (40, 200), "input_tokens='120'"),
        ({"input_tokens": 120, "output_tokens": 2**63}, (120, 200), "output_tokens=9223372"),
        ({"input_tokens": 12.5, "output_tokens": 30}, (40, 200), "input_tokens=12.5"),
        ({"input_tokens": True, "output_tokens": 30}, (40, 200), "input_tokens=True"),
        ({"input_tokens": 120, "output_tokens": 30, "reasoning_tokens": 500}, (120, 500),
         "reasoning_tokens above output_tokens"),
        ({"input_tokens": 10, "output_tokens": 30, "cached_input_tokens": 50}, (40, 200),
         "cached and cache-write tokens above input_tokens"),
        # A large valid count is a floor: the estimate never lowers it.
        ({"input_tokens": 9_000, "output_tokens": None}, (9_000, 200), "output_tokens=null"),
    ],
)
def test_the_usage_rule(reported: dict[str, Any] | None, tokens: tuple[int, int],
                        reason: str | None) -> None:
    fields = reported_usage(reported, EST)
    assert (fields["input_tokens"], fields["output_tokens"]) == tokens
    if reason is None:
        assert "estimated" not in fields
    else:
        assert fields["estimated"] is True and reason in fields["estimate_reason"]


def test_embeddings_have_no_output_to_miss() -> None:
    fields = reported_usage({"input_tokens": 8, "output_tokens": None},
                            Estimate(api_method="embeddings", input_tokens=3))
    assert fields == {"input_tokens": 8}  # exact: nothing was missing


# ---------------------------------------------------------------------------- the adapters
BAD_USAGES = {
    "null": {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
    "nan": {"prompt_tokens": math.nan, "completion_tokens": 5},
    "negative": {"prompt_tokens": -1000, "completion_tokens": -1000},
    "string": {"prompt_tokens": "12", "completion_tokens": "5"},
    "huge": {"prompt_tokens": 2**63, "completion_tokens": 2**63},
    "reasoning": {"prompt_tokens": 12, "completion_tokens": 5,
                  "completion_tokens_details": {"reasoning_tokens": 900}},
}


@pytest.mark.parametrize("kind", BAD_USAGES)
def test_openai_budget_holds_on_untrusted_usage(kind: str) -> None:
    """The issue's measurement: 100 calls against a budget that fits 10 of them (at their
    estimate). Before, every call settled at $0 and all 100 went through."""
    fake = FakeOpenAI(raw_usage=BAD_USAGES[kind])
    # gpt-4o: $2.50 / $10.00 per 1M. One call reserves its prompt (~30 tokens) and
    # max_tokens=1000 of output: about $0.0101; ten of them fit $0.11.
    m = QuotaManager(QuotaPolicy(monthly_budget_usd=Decimal("0.11"), rpm=None, tpm=None,
                                 rpd=None, tpd=None))
    with fake.serve() as url:
        client = track_openai(openai.OpenAI(api_key="k", base_url=url, max_retries=0,
                                            http_client=httpx2.Client()),
                              workspace_id="ws", manager=m)
        sent = 0
        for _ in range(100):
            try:
                client.chat.completions.create(model="gpt-4o", max_tokens=1000,
                                               messages=[{"role": "user", "content": "hi"}])
            except QuotaExceededError:
                break
            sent += 1
    assert 9 <= sent <= 11
    records = m.store.recent("workspace:ws", 100)
    assert len(records) == sent and all(r.estimated for r in records)
    assert all(r.output_tokens >= 1000 and r.estimate_reason for r in records)
    assert all(r.cost is not None and r.cost > 0 for r in records)


def test_langchain_untrusted_token_usage_settles_at_the_estimate() -> None:
    m = QuotaManager(QuotaPolicy.unlimited())
    handler = QuotaCallbackHandler(manager=m, workspace_id="ws")
    run_id = uuid4()
    handler.on_chat_model_start({}, [[HumanMessage("x" * 400)]], run_id=run_id,
                                invocation_params={"model": "gpt-4o-mini", "max_tokens": 64})
    handler.on_llm_end(LLMResult(generations=[[]], llm_output={
        "token_usage": {"prompt_tokens": None, "completion_tokens": "lots"}}), run_id=run_id)
    [record] = m.store.recent("workspace:ws", 10)
    assert record.estimated and (record.input_tokens, record.output_tokens) == (100, 64)
    assert "input_tokens=null" in (record.estimate_reason or "")


def test_litellm_untrusted_usage_and_a_bool_response_cost(clean_litellm_callbacks: None) -> None:
    from litellm.types.utils import ModelResponse, Usage

    from quota_hooks.adapters.litellm import QuotaLogger

    m = QuotaManager(QuotaPolicy.unlimited())
    logger = QuotaLogger(manager=m, default_workspace="ws")
    response = ModelResponse(model="gpt-4o-mini")
    response.usage = Usage(prompt_tokens=None, completion_tokens=None, total_tokens=None)
    now = datetime.now(UTC)
    kwargs = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "y" * 80}],
              "max_tokens": 32, "litellm_call_id": "c1",
              "standard_logging_object": {"model": "gpt-4o-mini", "response_cost": True,
                                          "call_type": "completion"}}
    logger.log_success_event(kwargs=kwargs, response_obj=response, start_time=now,
                             end_time=now)
    [record] = m.store.recent("workspace:ws", 10)
    assert record.estimated and record.output_tokens == 32 and record.input_tokens >= 20
    # response_cost=True is not $1.00: the price book prices the call.
    assert record.price_source != "litellm"
    assert record.cost == m.prices.cost(record.with_cost(None, None)).usd


def test_fake_openai_good_usage_is_exact() -> None:
    """The control: the same path with trustworthy usage is exact, not estimated."""
    fake = FakeOpenAI(FakeUsage(input_tokens=12, output_tokens=5))
    m = QuotaManager(QuotaPolicy())
    client = track_openai(openai.OpenAI(api_key="k", base_url="http://fake/v1",
                                        http_client=httpx2.Client(transport=fake.transport())),
                          workspace_id="ws", manager=m)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    [record] = m.store.recent("workspace:ws", 1)
    assert not record.estimated and (record.input_tokens, record.output_tokens) == (12, 5)


@pytest.mark.parametrize("estimator", [
    lambda size: 1 // 0,  # raises
    lambda size: -5,  # no count of tokens
    lambda size: "many",
])
def test_a_broken_token_estimator_costs_no_call_its_record(
    estimator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A user's token_estimator that raises or returns nonsense: the call is still admitted
    against the limit and counted at the default estimate, both at the HTTP level (a
    reservation, usage nulls over the wire) and in LangChain (an estimate made at the end)."""
    m = QuotaManager(QuotaPolicy(tpm=10**9, rpd=None, tpd=None, mode="raise"))
    m.token_estimator = estimator
    fake = FakeOpenAI(raw_usage={"prompt_tokens": None, "completion_tokens": None,
                                 "total_tokens": None})
    client = track_openai(openai.OpenAI(api_key="k", base_url="http://fake/v1",
                                        http_client=httpx2.Client(transport=fake.transport())),
                          workspace_id="ws", manager=m)
    with caplog.at_level("WARNING", logger="quota_hooks"):
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=50,
                                           messages=[{"role": "user", "content": "z" * 400}])
    handler = QuotaCallbackHandler(manager=m, workspace_id="ws")
    run_id = uuid4()
    handler.on_chat_model_start({}, [[HumanMessage("x" * 400)]], run_id=run_id,
                                invocation_params={"model": "gpt-4o-mini", "max_tokens": 64})
    handler.on_llm_end(LLMResult(generations=[[]], llm_output={}), run_id=run_id)
    records = m.store.recent("workspace:ws", 10)
    assert len(records) == 3 and all(r.estimated and r.input_tokens > 0 for r in records)
    assert m.store.pending() == 0
    said = [r for r in caplog.records if "token_estimator" in r.getMessage()]
    assert len(said) == 1  # once per estimator, not once per call
