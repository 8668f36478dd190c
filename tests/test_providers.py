"""Provider identity on every record, and one price whoever saw the call: LangChain models of
other providers (their own usage shapes and ``ls_provider``), LiteLLM's Anthropic and Gemini
calls, and the OpenAI SDK pointed at another OpenAI-compatible provider."""

from __future__ import annotations

from typing import Any

import httpx2
import litellm
import openai
import pytest
from genai_prices import Usage, calc_price
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.adapters.langchain import QuotaCallbackHandler
from quota_hooks.adapters.litellm import QuotaLogger
from quota_hooks.adapters.openai import track_openai
from quota_hooks.testing import FakeOpenAI, FakeUsage

MSG = [{"role": "user", "content": "hello"}]


def only(manager: QuotaManager) -> UsageRecord:
    [record] = manager.store.recent("workspace:ws", 10)
    return record


def genai(record: UsageRecord, provider: str, model: str, **usage: int) -> Any:
    return calc_price(Usage(**usage), model, provider_id=provider,
                      genai_request_timestamp=record.timestamp).total_price


class ProviderChat(GenericFakeChatModel):
    """A chat model of another provider, as LangChain integrations describe themselves."""

    provider: str = "anthropic"
    model_name: str = "claude-sonnet-4-20250514"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_provider=self.provider, ls_model_name=self.model_name,
                               ls_model_type="chat")


def test_langchain_anthropic_usage_with_cache_writes_of_both_lengths() -> None:
    m = QuotaManager(QuotaPolicy.unlimited())
    usage = {"input_tokens": 10_000, "output_tokens": 1_000, "total_tokens": 11_000,
             "input_token_details": {"cache_read": 2_000, "cache_creation": 3_000,
                                     "ephemeral_5m_input_tokens": 2_000,
                                     "ephemeral_1h_input_tokens": 1_000}}
    model = ProviderChat(messages=iter([AIMessage(content="ok", usage_metadata=usage)]))
    model.invoke("hi", config={"callbacks": [QuotaCallbackHandler(manager=m, workspace_id="ws")]})
    record = only(m)
    assert (record.provider, record.model) == ("anthropic", "claude-sonnet-4-20250514")
    assert (record.cached_input_tokens, record.cache_write_tokens,
            record.cache_write_1h_tokens) == (2_000, 3_000, 1_000)
    assert record.cost == genai(record, "anthropic", "claude-sonnet-4-20250514",
                                input_tokens=10_000, output_tokens=1_000, cache_read_tokens=2_000,
                                cache_write_tokens=3_000, cache_write_1h_tokens=1_000)
    assert record.price_source is not None and "genai-prices" in record.price_source


def test_langchain_gemini_above_its_tier() -> None:
    m = QuotaManager(QuotaPolicy.unlimited())
    usage = {"input_tokens": 250_000, "output_tokens": 2_000, "total_tokens": 252_000,
             "output_token_details": {"reasoning": 500}}
    model = ProviderChat(messages=iter([AIMessage(content="ok", usage_metadata=usage)]),
                         provider="google_genai", model_name="gemini-2.5-pro")
    model.invoke("hi", config={"callbacks": [QuotaCallbackHandler(manager=m, workspace_id="ws")]})
    record = only(m)
    assert record.provider == "google_genai" and record.reasoning_tokens == 500
    assert record.cost == genai(record, "google", "gemini-2.5-pro", input_tokens=250_000,
                                output_tokens=2_000, output_reasoning_tokens=500)


@pytest.mark.usefixtures("clean_litellm_callbacks")
@pytest.mark.parametrize(("model", "provider", "genai_model", "litellm_prices_it"), [
    # litellm's bundled map has no price for this Claude (its response_cost is 0.0): the
    # book still prices it, exactly.
    ("anthropic/claude-sonnet-4-20250514", "anthropic", "claude-sonnet-4-20250514", False),
    ("gemini/gemini-2.5-flash", "google", "gemini-2.5-flash", True),
])
def test_litellm_other_providers_priced_by_the_book(model: str, provider: str,
                                                    genai_model: str,
                                                    litellm_prices_it: bool) -> None:
    m = QuotaManager(QuotaPolicy.unlimited())
    litellm.callbacks = [QuotaLogger(manager=m, default_workspace="ws")]
    response = litellm.completion(model=model, messages=MSG, mock_response="fine, thanks")
    assert m.drain()
    record = only(m)
    assert record.provider == model.split("/")[0] and record.model == genai_model
    assert (record.input_tokens, record.output_tokens) == (
        response.usage.prompt_tokens, response.usage.completion_tokens)
    assert record.cost == genai(record, provider, genai_model,
                                input_tokens=record.input_tokens,
                                output_tokens=record.output_tokens)
    # litellm's own figure, kept as a cross-check (a $0 is no figure: not kept)
    assert (record.reported_cost is not None) is litellm_prices_it


@pytest.mark.parametrize(("base_url", "provider", "model"), [
    ("https://api.groq.com/openai/v1", "groq", "llama-3.3-70b-versatile"),
    ("https://api.deepseek.com", "deepseek", "deepseek-chat"),
    ("https://openrouter.ai/api/v1", "openrouter", "anthropic/claude-sonnet-4"),
    ("https://myresource.openai.azure.com/openai/deployments/gpt-4o", "azure", "gpt-4o"),
])
def test_the_openai_sdk_at_another_provider(base_url: str, provider: str, model: str) -> None:
    """The client's base URL says which provider serves the call, and so its price."""
    fake = FakeOpenAI(FakeUsage(input_tokens=10_000, output_tokens=1_000))
    m = QuotaManager(QuotaPolicy.unlimited())
    client = track_openai(openai.OpenAI(api_key="k", base_url=base_url, max_retries=0,
                                        http_client=httpx2.Client(transport=fake.transport())),
                          workspace_id="ws", manager=m)
    client.chat.completions.create(model=model, messages=MSG)
    record = only(m)
    assert record.provider == provider
    assert record.cost == genai(record, provider, model, input_tokens=10_000,
                                output_tokens=1_000)


def test_the_same_call_costs_the_same_through_every_adapter() -> None:
    """One price, whoever saw the call: a gpt-4o call of known usage through the OpenAI
    transport, the LangChain handler and LiteLLM's callback."""
    costs = []
    for source in ("openai", "langchain", "litellm"):
        m = QuotaManager(QuotaPolicy.unlimited())
        fields = {"input_tokens": 1_200, "output_tokens": 300, "cached_input_tokens": 1_024}
        m.record(UsageRecord(workspace_id="ws", model="gpt-4o", provider="openai",
                             source=source, **fields))
        costs.append(only(m).cost)
    assert costs[0] is not None and costs.count(costs[0]) == 3
