"""The LangChain handler, driven through the real langchain-core and langchain-openai offline."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any
from uuid import uuid4

import httpx2
import pytest
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.exceptions import ModelRateLimitError
from langchain_core.language_models import FakeListLLM, GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from openai import OpenAI

from quota_hooks import QuotaManager, QuotaPolicy, QuotaStatus, UsageRecord
from quota_hooks.adapters.langchain import MAX_OPEN_RUNS, QuotaCallbackHandler
from quota_hooks.adapters.openai import track_openai
from quota_hooks.testing import FakeOpenAI, FakeUsage, ManualClock

USAGE = FakeUsage(input_tokens=100, output_tokens=20, cached_tokens=64, reasoning_tokens=5)
SNAPSHOT = "gpt-4o-mini-2024-07-18"  # the model name FakeOpenAI answers with


@pytest.fixture
def manager(clock: ManualClock) -> QuotaManager:
    return QuotaManager(QuotaPolicy.unlimited(), clock=clock)


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(USAGE)


@pytest.fixture
def handler(manager: QuotaManager) -> QuotaCallbackHandler:
    return QuotaCallbackHandler(manager=manager, workspace_id="ws")


def chat(fake: FakeOpenAI, model: str = "gpt-4o-mini", **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=model, api_key="sk-test", base_url="http://fake/v1", max_retries=0,
        http_client=httpx2.Client(transport=fake.transport()),
        http_async_client=httpx2.AsyncClient(transport=fake.transport()),
        stream_usage=True, **kwargs,
    )


def records(manager: QuotaManager, ws: str = "ws") -> list[UsageRecord]:
    return list(reversed(manager.store.recent(f"workspace:{ws}", 1000)))


def assert_exact(record: UsageRecord) -> None:
    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (100, 20, 120)
    assert (record.cached_input_tokens, record.reasoning_tokens) == (64, 5)
    assert not record.estimated and record.success and record.source == "langchain"


def test_invoke_records_exact_usage_workspace_and_scopes(
    manager: QuotaManager, handler: QuotaCallbackHandler, fake: FakeOpenAI
) -> None:
    chat(fake).invoke("hello", config={
        "callbacks": [handler], "tags": ["team:ml", "nightly"],
        "metadata": {"workspace_id": "acme", "user": "u-7"},  # run metadata wins
    })
    [record] = records(manager, "acme")
    assert_exact(record)
    assert (record.model, record.provider, record.api_method) == (
        SNAPSHOT, "openai", "chat.completions")
    assert record.scopes == {"team": "ml", "user": "u-7"}
    assert record.tags == ("team:ml", "nightly")
    assert record.request_id == "chatcmpl-1" and not record.stream
    assert records(manager, "ws") == []
    assert handler.open_runs == 0


async def test_ainvoke_runs_inline_on_the_event_loop(
    manager: QuotaManager, handler: QuotaCallbackHandler, fake: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    record = manager.record

    def spy(*args: Any, **kwargs: Any) -> None:
        threads.append(threading.get_ident())
        record(*args, **kwargs)

    monkeypatch.setattr(manager, "record", spy)
    await chat(fake).ainvoke("hello", config={"callbacks": [handler]})
    assert threads == [threading.get_ident()]  # no hop to LangChain's thread pool
    [got] = records(manager)
    assert_exact(got)


def test_stream_is_recorded_once_with_exact_input(
    manager: QuotaManager, handler: QuotaCallbackHandler, fake: FakeOpenAI
) -> None:
    text = "".join(str(c.content) for c in chat(fake).stream("hi", config={"callbacks": [handler]}))
    assert text
    [record] = records(manager)
    assert_exact(record)  # merged chunks: input counted once
    assert record.stream and record.model == SNAPSHOT


async def test_astream(manager: QuotaManager, handler: QuotaCallbackHandler,
                       fake: FakeOpenAI) -> None:
    async for _ in chat(fake).astream("hi", config={"callbacks": [handler]}):
        pass
    [record] = records(manager)
    assert_exact(record)
    assert record.stream


def test_batch_and_abatch(manager: QuotaManager, handler: QuotaCallbackHandler,
                          fake: FakeOpenAI) -> None:
    llm = chat(fake)
    llm.batch(["a", "b", "c"], config={"callbacks": [handler]})
    asyncio.run(llm.abatch(["d", "e"], config={"callbacks": [handler]}))
    got = records(manager)
    assert len(got) == 5
    assert sum(r.input_tokens for r in got) == 500
    assert handler.open_runs == 0


def test_a_chain_with_two_model_calls_and_two_models(
    manager: QuotaManager, handler: QuotaCallbackHandler
) -> None:
    writer = chat(FakeOpenAI(USAGE), "gpt-4o-mini")
    critic = chat(FakeOpenAI(FakeUsage(input_tokens=300, output_tokens=40)), "gpt-4o")
    chain = (
        ChatPromptTemplate.from_template("Write about {topic}")
        | writer
        | StrOutputParser()
        | (lambda draft: f"Critique: {draft}")
        | critic
        | StrOutputParser()
    )
    chain.invoke({"topic": "quotas"}, config={"callbacks": [handler],
                                              "metadata": {"workspace_id": "acme"}})
    got = records(manager, "acme")
    assert [(r.input_tokens, r.output_tokens) for r in got] == [(100, 20), (300, 40)]
    report = manager.status("acme")
    assert report.enhanced_tracking is not None
    models = report.enhanced_tracking.models_breakdown
    assert models["gpt-4o-mini-2024-07-18"].tokens_used == 120
    assert sum(m.request_count for m in models.values()) == 2


def test_responses_api_is_its_own_method(
    manager: QuotaManager, handler: QuotaCallbackHandler, fake: FakeOpenAI
) -> None:
    llm = chat(fake, use_responses_api=True)
    llm.invoke("hi", config={"callbacks": [handler]})
    for _ in llm.stream("hi", config={"callbacks": [handler]}):
        pass
    got = records(manager)
    assert [(r.api_method, r.stream) for r in got] == [("responses", False), ("responses", True)]
    assert all(r.input_tokens == 100 and r.cached_input_tokens == 64 for r in got)


def test_generic_fake_chat_model_usage_without_a_model_name(
    manager: QuotaManager, handler: QuotaCallbackHandler
) -> None:
    usage = {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
             "input_token_details": {"cache_read": 4, "cache_creation": 2},
             "output_token_details": {"reasoning": 3}}
    model = GenericFakeChatModel(messages=iter([AIMessage(content="fine", usage_metadata=usage)]))
    peer = UsageMetadataCallbackHandler()
    model.invoke("hi", config={"callbacks": [handler, peer]})
    [record] = records(manager)
    # LangChain's own handler drops usage without a model name; we keep it as "unknown".
    assert peer.usage_metadata == {}
    assert record.model == "unknown" and record.provider == "genericfakechatmodel"
    assert (record.input_tokens, record.cached_input_tokens, record.cache_write_tokens) == (
        11, 4, 2)
    assert (record.output_tokens, record.reasoning_tokens) == (7, 3)


def test_model_falls_back_to_invocation_params(
    manager: QuotaManager, handler: QuotaCallbackHandler
) -> None:
    run_id = uuid4()
    handler.on_chat_model_start({}, [[HumanMessage("hi")]], run_id=run_id,
                                invocation_params={"model": "gpt-4.1-mini"},
                                metadata={"ls_provider": "openai"})
    message = AIMessage(content="ok", usage_metadata={"input_tokens": 5, "output_tokens": 1,
                                                      "total_tokens": 6})
    handler.on_llm_end(LLMResult(generations=[[ChatGeneration(message=message)]]), run_id=run_id)
    [record] = records(manager)
    assert (record.model, record.provider, record.total_tokens) == ("gpt-4.1-mini", "openai", 6)
    assert record.cost is not None and record.cost > 0  # priced by the fallback name


def test_without_usage_the_run_settles_at_its_estimate(
    manager: QuotaManager, handler: QuotaCallbackHandler
) -> None:
    model = GenericFakeChatModel(messages=iter(["one two three four five"]))  # 23 chars
    for _ in model.stream("x" * 40, config={"callbacks": [handler]}):
        pass
    FakeListLLM(responses=["abcdefgh"]).invoke("p" * 9, config={"callbacks": [handler]})
    chat_rec, llm_rec = records(manager)
    # The prompt's ceil(chars / 4), and the output the run was allowed (default_max_tokens),
    # as its reservation held: never less because the model reported nothing.
    assert chat_rec.estimated and chat_rec.stream
    assert chat_rec.estimate_reason == "no usage reported"
    assert (chat_rec.input_tokens, chat_rec.output_tokens) == (10, 1024)
    assert llm_rec.estimated and llm_rec.api_method == "completions"
    assert (llm_rec.input_tokens, llm_rec.output_tokens) == (3, 1024)
    FakeListLLM(responses=["x" * 8000]).invoke("p", config={"callbacks": [handler]})
    assert records(manager)[-1].output_tokens == 2000  # more was seen than allowed: counted


def test_plain_llm_token_usage_from_llm_output(
    manager: QuotaManager, handler: QuotaCallbackHandler
) -> None:
    run_id = uuid4()
    handler.on_llm_start({}, ["hi"], run_id=run_id, invocation_params={"model_name": "gpt-4o"})
    handler.on_llm_end(LLMResult(generations=[[]], llm_output={
        "token_usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}),
        run_id=run_id)
    [record] = records(manager)
    assert (record.api_method, record.model, record.input_tokens, record.output_tokens) == (
        "completions", "gpt-4o", 30, 9)
    assert not record.estimated


def test_errors_and_429(manager: QuotaManager, handler: QuotaCallbackHandler,
                        fake: FakeOpenAI) -> None:
    fake.fail_next(500, times=1)
    with pytest.raises(Exception, match="500"):
        chat(fake).invoke("hi", config={"callbacks": [handler]})
    fake.fail_next(429, times=1)
    with pytest.raises(Exception, match="429"):
        chat(fake).invoke("hi", config={"callbacks": [handler]})
    run_id = uuid4()
    handler.on_chat_model_start({}, [[HumanMessage("hi")]], run_id=run_id)
    handler.on_llm_error(ModelRateLimitError("slow down"), run_id=run_id)
    got = records(manager)
    assert [(r.success, r.status_code, r.total_tokens) for r in got] == [
        (False, 500, 0), (False, 429, 0), (False, 429, 0)]
    assert got[0].model == "gpt-4o-mini"  # from the invocation params
    assert manager.status("ws").status is QuotaStatus.RATE_LIMITED
    assert handler.open_runs == 0


def test_peer_totals_per_model_equal_langchains_usage_handler(
    manager: QuotaManager, handler: QuotaCallbackHandler
) -> None:
    peer = UsageMetadataCallbackHandler()
    config: Any = {"callbacks": [handler, peer]}
    mini = chat(FakeOpenAI(USAGE), "gpt-4o-mini")
    big = chat(FakeOpenAI(FakeUsage(input_tokens=250, output_tokens=75, cached_tokens=128)),
               "gpt-4o")
    mini.invoke("a", config=config)
    mini.batch(["b", "c"], config=config)
    for _ in big.stream("d", config=config):
        pass
    asyncio.run(big.ainvoke("e", config=config))
    ours: Counter[tuple[str, str]] = Counter()
    for r in records(manager):
        ours[(r.model, "input")] += r.input_tokens
        ours[(r.model, "output")] += r.output_tokens
        ours[(r.model, "cache_read")] += r.cached_input_tokens
    theirs: Counter[tuple[str, str]] = Counter()
    for model, usage in peer.usage_metadata.items():
        theirs[(model, "input")] += usage["input_tokens"]
        theirs[(model, "output")] += usage["output_tokens"]
        theirs[(model, "cache_read")] += usage.get("input_token_details", {}).get("cache_read", 0)
    assert len(peer.usage_metadata) == 2
    assert ours == theirs and ours[(SNAPSHOT, "input")] == 3 * 100
    assert sum(v for (_, kind), v in ours.items() if kind == "input") == 3 * 100 + 2 * 250


def test_no_growth_over_20k_runs(manager: QuotaManager, handler: QuotaCallbackHandler) -> None:
    result = LLMResult(generations=[[ChatGeneration(message=AIMessage(
        content="", usage_metadata={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}))]])
    messages = [[HumanMessage("hi")]]
    for i in range(20_000):  # 20x the open-run cap: a leak would show
        run_id = uuid4()
        handler.on_chat_model_start({}, messages, run_id=run_id)
        if i % 2:
            handler.on_llm_end(result, run_id=run_id)
        else:
            handler.on_llm_error(RuntimeError("x"), run_id=run_id)
    assert handler.open_runs == 0
    for _ in range(MAX_OPEN_RUNS + 50):  # runs that never end are forgotten, oldest first
        handler.on_chat_model_start({}, messages, run_id=uuid4())
    assert handler.open_runs == MAX_OPEN_RUNS


def test_tracking_errors_never_reach_the_call(
    manager: QuotaManager, handler: QuotaCallbackHandler, fake: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(*args: Any) -> UsageRecord:
        raise ValueError("unexpected payload")

    monkeypatch.setattr(handler, "to_record", explode)
    reply = chat(fake).invoke("hi", config={"callbacks": [handler]})
    assert reply.content
    assert manager.tracking_errors == 1
    assert manager.status("ws", enhanced=False).status is QuotaStatus.DEGRADED


def test_embeddings_route_through_a_tracked_client(
    manager: QuotaManager, fake: FakeOpenAI
) -> None:
    client = track_openai(
        OpenAI(api_key="sk-test", base_url="http://fake/v1",
               http_client=httpx2.Client(transport=fake.transport())),
        workspace_id="ws", manager=manager,
    )
    embeddings = OpenAIEmbeddings(model="text-embedding-3-small", api_key="sk-test",
                                  client=client.embeddings, check_embedding_ctx_length=False)
    vectors = embeddings.embed_documents(["alpha", "beta"])
    assert len(vectors) == 2
    [record] = records(manager)
    assert record.api_method == "embeddings" and record.source == "openai"
    assert record.input_tokens == 100
