"""Enforcement: reserve before the call, settle after it, in the core and in every adapter."""

from __future__ import annotations

import asyncio
import socket
import threading
from decimal import Decimal
from typing import Any

import httpx2
import litellm
import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI, OpenAI
from store_helpers import T0

from quota_hooks import (
    QuotaExceededError,
    QuotaManager,
    QuotaPolicy,
    QuotaStatus,
    RateLimitedError,
    StorageError,
    UsageRecord,
)
from quota_hooks.adapters.langchain import QuotaCallbackHandler
from quota_hooks.adapters.litellm import QuotaLogger, guarded
from quota_hooks.adapters.openai import track_openai
from quota_hooks.storage import Store
from quota_hooks.testing import FakeOpenAI, FakeUsage, ManualClock
from quota_hooks.usage import Estimate

MSG = [{"role": "user", "content": "hello"}]


def limits(**fields: Any) -> QuotaPolicy:
    return QuotaPolicy.unlimited().model_copy(update=fields)


# ---------------------------------------------------------------------- the core
def test_raise_mode_refuses_with_the_limit_and_retry_after(clock: ManualClock) -> None:
    manager = QuotaManager(limits(rpm=2, mode="raise"), clock=clock)
    estimate = Estimate(model="gpt-4o-mini", input_tokens=10)
    clock.advance(0.5)
    for _ in range(2):
        assert manager.acquire("ws", estimate) is not None
    with pytest.raises(RateLimitedError) as info:
        manager.acquire("ws", estimate)
    error = info.value
    assert (error.scope, error.limit, error.used, error.maximum) == ("workspace:ws", "rpm", 2, 2)
    assert error.retry_after == pytest.approx(59.5)
    assert str(error) == ("workspace:ws: rpm limit reached (2 of 2 used); the call was not sent,"
                          " retry after 59.5s")
    assert manager.denials == 1


def test_wait_mode_releases_the_call_exactly_when_the_window_frees(clock: ManualClock) -> None:
    manager = QuotaManager(limits(rpm=2, max_wait=60), clock=clock)  # rpm waits by default
    manager.sleep = clock.sleep
    estimate = Estimate(model="gpt-4o-mini", input_tokens=10)
    clock.advance(0.25)
    for _ in range(2):
        reservation = manager.acquire("ws", estimate)
        manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini", input_tokens=8),
                       reservation)
    assert manager.acquire("ws", estimate) is not None
    assert clock() == T0 + 60  # the first two calls' second bucket left the window just now
    clock.advance(1)
    manager.acquire("ws", estimate)  # the 4th call: the 2nd call's bucket is gone too
    assert clock() == T0 + 61
    short = QuotaManager(limits(rpm=1, max_wait=5), clock=clock)
    short.sleep = clock.sleep
    short.acquire("ws", estimate)
    with pytest.raises(RateLimitedError, match=r"more than max_wait=5s"):
        short.acquire("ws", estimate)


async def test_async_wait_never_blocks_the_loop(clock: ManualClock) -> None:
    manager = QuotaManager(limits(tpm=100, max_wait=60), clock=clock)
    manager.asleep = clock.asleep
    first = await manager.aacquire("ws", Estimate(model="gpt-4o-mini", input_tokens=80))
    assert first is not None
    await manager.aacquire("ws", Estimate(model="gpt-4o-mini", input_tokens=80))
    assert clock() == T0 + 60


def test_observe_mode_never_blocks(clock: ManualClock) -> None:
    manager = QuotaManager(limits(rpm=1, monthly_budget_usd=Decimal(0), mode="observe"),
                           clock=clock)
    assert manager.acquire("ws", Estimate(model="gpt-4o", input_tokens=1000)) is None
    per_limit = QuotaManager(limits(rpm=1, tpm=10, modes={"tpm": "observe", "rpm": "raise"}),
                             clock=clock)
    assert per_limit.acquire("ws", Estimate(input_tokens=1000)) is not None  # tpm only observes
    with pytest.raises(RateLimitedError, match="rpm"):
        per_limit.acquire("ws", Estimate(input_tokens=1))


def test_the_budget_raises_quota_exceeded(clock: ManualClock) -> None:
    manager = QuotaManager(limits(monthly_budget_usd=Decimal("0.02")), clock=clock)
    estimate = Estimate(model="gpt-4o", input_tokens=4000)  # $0.01 at $2.50 per 1M
    manager.acquire("ws", estimate)
    manager.acquire("ws", estimate)
    with pytest.raises(QuotaExceededError) as info:
        manager.acquire("ws", estimate)
    assert not isinstance(info.value, RateLimitedError)
    assert info.value.limit == "monthly_budget_usd" and info.value.retry_after is None
    assert str(info.value) == ("workspace:ws: the monthly budget of $0.02 has no room for this "
                               "call ($0.02 spent or held this month); the call was not sent")


def test_team_scopes_share_one_limit_across_workspaces(clock: ManualClock) -> None:
    manager = QuotaManager(QuotaPolicy.unlimited(), clock=clock,
                           scope_policies={"team:ml": limits(rpm=2, mode="raise")})
    manager.acquire("ws-a", Estimate(input_tokens=1), scopes={"team": "ml"})
    manager.acquire("ws-b", Estimate(input_tokens=1), scopes={"team": "ml"})
    with pytest.raises(RateLimitedError) as info:
        manager.acquire("ws-c", Estimate(input_tokens=1), scopes={"team": "ml"})
    assert info.value.scope == "team:ml"
    assert manager.acquire("ws-c", Estimate(input_tokens=1), scopes={"team": "other"}) is None


def test_budget_of_10_dollars_never_overshoots_and_nothing_leaks(store: Store) -> None:
    clock = ManualClock(T0)
    manager = QuotaManager(limits(monthly_budget_usd=Decimal(10)), store=store, clock=clock)
    estimate = Estimate(model="gpt-4o", input_tokens=4000)  # $0.01
    lock = threading.Lock()
    outcome = {"ok": 0, "failed": 0, "refused": 0}

    def worker(offset: int) -> None:
        for i in range(offset, 5000, 4):
            try:
                reservation = manager.acquire("ws", estimate)
            except QuotaExceededError:
                with lock:
                    outcome["refused"] += 1
                continue
            if i % 10 == 0:  # 10% of the calls fail: the provider charges nothing
                manager.record(UsageRecord(workspace_id="ws", model="gpt-4o", success=False,
                                           status_code=500), reservation)
                kind = "failed"
            else:
                manager.record(UsageRecord(workspace_id="ws", model="gpt-4o",
                                           input_tokens=4000), reservation)
                kind = "ok"
            with lock:
                outcome[kind] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = manager.status("ws", enhanced=False)
    spent = Decimal(str(report.monthly_budget_usd.current))
    assert spent <= Decimal("10.00")
    assert outcome["ok"] == 1000 and spent == Decimal("10.00")
    assert sum(outcome.values()) == 5000
    # no reservation is left holding anything: the counters are the records, exactly
    assert report.tokens_per_minute.current == 1000 * 4000


def test_fail_open_and_fail_closed_with_redis_down(clock: ManualClock) -> None:
    from quota_hooks.storage.redis import RedisStore

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
    open_manager = QuotaManager(limits(rpm=10), store=down, clock=clock)
    assert open_manager.acquire("ws", Estimate(input_tokens=1)) is None  # the call goes on
    assert open_manager.fail_open_calls == 1 and open_manager.tracking_errors == 1
    closed = QuotaManager(limits(rpm=10, fail_open=False), store=down, clock=clock)
    with pytest.raises(StorageError, match="refused because the usage store failed"):
        closed.acquire("ws", Estimate(input_tokens=1))
    assert closed.denials == 1


# ---------------------------------------------------------------------- the adapters
def test_openai_exactly_n_admitted_out_of_2000_concurrent_calls(store: Store) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=5, output_tokens=5))
    manager = QuotaManager(limits(rpm=100, mode="raise"), store=store, clock=ManualClock(T0))
    client = track_openai(
        OpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=0,
               http_client=httpx2.Client(transport=fake.transport())),
        workspace_id="ws", manager=manager)
    admitted = []
    lock = threading.Lock()

    def worker() -> None:
        mine = 0
        for _ in range(250):
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=MSG,  # type: ignore[arg-type]
                                               max_tokens=5)
                mine += 1
            except RateLimitedError:
                pass
        with lock:
            admitted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100
    assert len(fake.requests) == 100  # a refused call never reached the provider
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 100


async def test_openai_async_refusal_before_any_request(clock: ManualClock) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=5, output_tokens=5))
    manager = QuotaManager(limits(rpm=20, mode="raise"), clock=clock)
    from openai import AsyncOpenAI

    client = track_openai(
        AsyncOpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=0,
                    http_client=httpx2.AsyncClient(transport=fake.transport())),
        workspace_id="ws", manager=manager)

    async def one() -> bool:
        try:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
        except RateLimitedError:
            return False
        return True

    results = await asyncio.gather(*(one() for _ in range(500)))
    assert sum(results) == 20 and len(fake.requests) == 20


def test_openai_connection_error_gives_the_reservation_back(clock: ManualClock) -> None:
    manager = QuotaManager(limits(rpm=1, mode="raise"), clock=clock)

    def refuse(request: Any) -> Any:
        raise httpx2.ConnectError("refused", request=request)

    client = track_openai(
        OpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=0,
               http_client=httpx2.Client(transport=httpx2.MockTransport(refuse))),
        workspace_id="ws", manager=manager)
    for _ in range(3):  # the limit of 1 is never used up by calls that never left
        with pytest.raises(Exception, match="Connection error"):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 0


def test_langchain_exactly_n_admitted_and_no_request_when_refused(store: Store) -> None:
    manager = QuotaManager(limits(rpm=50, mode="raise"), store=store, clock=ManualClock(T0))
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    model = GenericFakeChatModel(messages=iter(["ok"] * 1000))
    admitted = 0
    for _ in range(300):
        try:
            model.invoke("hi", config={"callbacks": [handler]})
            admitted += 1
        except RateLimitedError:
            pass
    assert admitted == 50
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 50
    assert handler.open_runs == 0
    # ChatOpenAI: a refused run sends no HTTP request
    fake = FakeOpenAI(FakeUsage(input_tokens=5, output_tokens=5))
    llm = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", base_url="http://fake/v1",  # type: ignore[arg-type]
                     http_client=httpx2.Client(transport=fake.transport()), max_retries=0)
    with pytest.raises(RateLimitedError):
        llm.invoke("hi", config={"callbacks": [handler]})
    assert fake.requests == []


@pytest.mark.usefixtures("clean_litellm_callbacks")
def test_litellm_exactly_n_admitted_async_hook_and_sync_guard(store: Store) -> None:
    manager = QuotaManager(limits(rpm=20, mode="raise"), store=store, clock=ManualClock(T0))
    quota_logger = QuotaLogger(manager=manager, default_workspace="ws")
    litellm.callbacks = [quota_logger]
    async def run() -> list[bool]:
        async def one() -> bool:
            try:
                await litellm.acompletion(model="gpt-4o-mini", messages=MSG,
                                          mock_response="ok")
            except RateLimitedError:
                return False
            return True

        results = await asyncio.gather(*(one() for _ in range(60)))
        await manager.adrain()
        return results

    assert sum(asyncio.run(run())) == 20
    completion = guarded(litellm.completion, quota_logger)
    with pytest.raises(RateLimitedError):
        completion(model="gpt-4o-mini", messages=MSG, mock_response="ok")
    assert manager.drain()
    status = manager.status("ws", enhanced=False)
    assert status.requests_per_minute.current == 20  # refusals are not provider calls
    assert quota_logger._reservations == {}


def test_a_call_seen_by_two_adapters_counts_once(clock: ManualClock) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=20))
    manager = QuotaManager(limits(rpm=10, mode="raise"), clock=clock)
    llm, _ = _chat_on_tracked_client(manager, fake)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    llm.invoke("hi", config={"callbacks": [handler], "metadata": {"workspace_id": "acme"}})
    for _ in llm.stream("hi", config={"callbacks": [handler]}):
        pass
    acme = manager.store.recent("workspace:acme", 10)
    assert len(acme) == 1 and acme[0].source == "openai"  # once, at the transport
    assert acme[0].input_tokens == 100
    [default_ws] = manager.store.recent("workspace:ws", 10)
    assert default_ws.stream and default_ws.source == "openai"
    assert manager.store.recent("workspace:transport-ws", 10) == []  # the run's workspace won
    status = manager.status("acme", enhanced=False)
    assert status.requests_per_minute.current == 1 and status.status is QuotaStatus.NORMAL


def _chat_on_tracked_client(
    manager: QuotaManager, fake: FakeOpenAI, max_retries: int = 0
) -> tuple[ChatOpenAI, OpenAI]:
    tracked = track_openai(
        OpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=max_retries,
               http_client=httpx2.Client(transport=fake.transport())),
        workspace_id="transport-ws", manager=manager)
    llm = ChatOpenAI(model="gpt-4o-mini", client=tracked.chat.completions,
                     root_client=tracked, api_key="sk-test", max_retries=max_retries)  # type: ignore[arg-type]
    return llm, tracked


def _async_chat_on_tracked_client(manager: QuotaManager, fake: FakeOpenAI) -> ChatOpenAI:
    tracked = track_openai(
        AsyncOpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=0,
                    http_client=httpx2.AsyncClient(transport=fake.transport())),
        workspace_id="transport-ws", manager=manager)
    return ChatOpenAI(model="gpt-4o-mini", async_client=tracked.chat.completions,
                      root_async_client=tracked, api_key="sk-test")  # type: ignore[arg-type]


def test_one_generate_over_several_prompts_counts_each_request_once(
    clock: ManualClock,
) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=10, output_tokens=2))
    manager = QuotaManager(limits(rpm=10, mode="raise"), clock=clock)
    llm, _ = _chat_on_tracked_client(manager, fake)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    llm.generate([[HumanMessage(p)] for p in "abc"], callbacks=[handler])
    assert len(fake.requests) == 3
    records = manager.store.recent("workspace:ws", 10)
    assert len(records) == 3 and {r.source for r in records} == {"openai"}
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 3
    assert handler.open_runs == 0


async def test_one_agenerate_over_several_prompts_counts_each_request_once(
    clock: ManualClock,
) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=10, output_tokens=2))
    manager = QuotaManager(limits(rpm=10, mode="raise"), clock=clock)
    llm = _async_chat_on_tracked_client(manager, fake)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    await llm.agenerate([[HumanMessage(p)] for p in "abcd"], callbacks=[handler])
    assert len(fake.requests) == 4
    assert len(manager.store.recent("workspace:ws", 10)) == 4
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 4
    assert handler.open_runs == 0


def test_retries_inside_a_langchain_run_are_enforced_and_counted(clock: ManualClock) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=10, output_tokens=2))
    manager = QuotaManager(limits(rpm=2, mode="raise"), clock=clock)
    llm, _ = _chat_on_tracked_client(manager, fake, max_retries=3)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    fake.fail_next(500, times=5)
    # attempt 1 takes the run's reservation, attempt 2 reserves the second request of the
    # limit, attempt 3 is refused before it is sent: retries cannot escape the limit.
    with pytest.raises(RateLimitedError):
        llm.invoke("hi", config={"callbacks": [handler]})
    assert len(fake.requests) == 2
    records = manager.store.recent("workspace:ws", 10)
    assert sorted(r.attempt for r in records) == [0, 1]  # each attempt once, in the run's ws
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 2
    assert handler.open_runs == 0


def test_an_abandoned_run_does_not_switch_off_enforcement_later(clock: ManualClock) -> None:
    """A refused prompt aborts a whole generate(): the prompts started before it never end.
    Their marks must not carry later direct calls on the tracked client past the limit."""
    fake = FakeOpenAI(FakeUsage(input_tokens=10, output_tokens=2))
    manager = QuotaManager(limits(rpm=2, mode="raise"), clock=clock)
    llm, tracked = _chat_on_tracked_client(manager, fake)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    with pytest.raises(RateLimitedError):  # prompts 1 and 2 reserve, prompt 3 is refused
        llm.generate([[HumanMessage(p)] for p in "abc"], callbacks=[handler])
    assert fake.requests == []
    assert handler.open_runs == 0
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 0  # released
    direct = track_openai(tracked, workspace_id="ws", manager=manager)
    for _ in range(2):
        direct.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(RateLimitedError):
        direct.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    assert len(fake.requests) == 2
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 2


def test_a_failed_prompt_of_a_sync_generate_releases_the_prompts_never_sent(
    clock: ManualClock,
) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=10, output_tokens=2))
    manager = QuotaManager(limits(rpm=10, mode="raise"), clock=clock)
    llm, _ = _chat_on_tracked_client(manager, fake)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    fake.fail_next(400)
    with pytest.raises(Exception, match="400"):
        llm.generate([[HumanMessage(p)] for p in "abc"], callbacks=[handler])
    assert len(fake.requests) == 1
    assert handler.open_runs == 0
    status = manager.status("ws", enhanced=False)
    assert status.requests_per_minute.current == 1  # the failed request; b and c released


def test_a_tracking_bug_reading_the_response_still_settles_the_reservation(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quota_hooks.adapters._openai_call import OpenAICall

    def broken(self: Any, status: int, headers: Any) -> bool:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(OpenAICall, "respond", broken)
    fake = FakeOpenAI(FakeUsage(input_tokens=10, output_tokens=2))
    manager = QuotaManager(limits(tpm=10_000, mode="raise"), clock=clock)
    client = track_openai(
        OpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=0,
               http_client=httpx2.Client(transport=fake.transport())),
        workspace_id="ws", manager=manager)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MSG,  # type: ignore[arg-type]
                                           max_tokens=4000)
    assert reply.choices[0].message.content  # the caller's call is untouched
    assert manager.tracking_errors >= 1
    # the 4,000-token estimate is not left held for the reservation's ttl
    assert manager.status("ws", enhanced=False).tokens_per_minute.current < 4000


def test_a_tracked_call_inside_another_models_run_is_its_own(clock: ManualClock) -> None:
    """A non-OpenAI model's run (a fake here; Anthropic alike) cannot be claimed by a tracked
    OpenAI call made inside it, say from its streaming loop: both are counted, each in its own
    workspace."""
    fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=20))
    manager = QuotaManager(limits(rpm=100, mode="raise"), clock=clock)
    _, tracked = _chat_on_tracked_client(manager, fake)
    direct = track_openai(tracked, workspace_id="openai-ws", manager=manager)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="lc-ws")
    other = GenericFakeChatModel(messages=iter(["hello there friend"]))
    for _ in other.stream("hi", config={"callbacks": [handler]}):
        direct.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    calls = len(fake.requests)
    assert calls >= 1
    assert [r.source for r in manager.store.recent("workspace:lc-ws", 10)] == ["langchain"]
    assert len(manager.store.recent("workspace:openai-ws", 10)) == calls
    assert handler.open_runs == 0


def test_a_chat_openai_run_nested_in_another_run_claims_its_own_mark(
    clock: ManualClock,
) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=20))
    manager = QuotaManager(limits(rpm=100, mode="raise"), clock=clock)
    llm, _ = _chat_on_tracked_client(manager, fake)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    other = GenericFakeChatModel(messages=iter(["hello"]))
    for _ in other.stream("hi", config={"callbacks": [handler]}):
        llm.invoke("inner", config={"callbacks": [handler], "metadata": {"workspace_id": "in"}})
    assert len(fake.requests) == 1
    assert [r.source for r in manager.store.recent("workspace:in", 10)] == ["openai"]
    assert [r.source for r in manager.store.recent("workspace:ws", 10)] == ["langchain"]
    assert handler.open_runs == 0


def test_a_refusal_inside_an_enclosing_run_leaves_that_run_alone(clock: ManualClock) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=20))
    manager = QuotaManager(QuotaPolicy.unlimited(), clock=clock,
                           policies={"tight": limits(rpm=0, mode="raise")})
    llm, _ = _chat_on_tracked_client(manager, fake)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="default-ws")
    other = GenericFakeChatModel(messages=iter(["hello"]))
    config: Any = {"callbacks": [handler], "metadata": {"workspace_id": "acme", "user": "u1"}}
    for _ in other.stream("hi", config=config):
        with pytest.raises(RateLimitedError):
            llm.invoke("x", config={"callbacks": [handler],
                                    "metadata": {"workspace_id": "tight"}})
    [outer] = manager.store.recent("workspace:acme", 10)
    assert outer.scopes == {"user": "u1"} and outer.source == "langchain"
    assert fake.requests == [] and handler.open_runs == 0


def test_one_completions_request_for_several_prompts_counts_once(clock: ManualClock) -> None:
    from langchain_openai import OpenAI as CompletionsLLM

    fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=20))
    manager = QuotaManager(limits(rpm=100, mode="raise"), clock=clock)
    _, tracked = _chat_on_tracked_client(manager, fake)
    llm = CompletionsLLM(model="gpt-3.5-turbo-instruct", client=tracked.completions,
                         api_key="sk-test", max_retries=0)  # type: ignore[arg-type]
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    llm.generate(["a", "b", "c"], callbacks=[handler])
    assert len(fake.requests) == 1  # LangChain sends the three prompts in one request
    [record] = manager.store.recent("workspace:ws", 10)
    assert record.source == "openai" and not record.estimated
    status = manager.status("ws", enhanced=False)
    assert status.requests_per_minute.current == 1  # the other runs' holds went back
    assert handler.open_runs == 0


async def test_breaking_out_of_astream_counts_the_call_once(clock: ManualClock) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=20))
    manager = QuotaManager(limits(rpm=100, mode="raise"), clock=clock)
    llm = _async_chat_on_tracked_client(manager, fake)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    async for _ in llm.astream("hi", config={"callbacks": [handler]}):
        break
    for _ in range(100):  # the transport records when the abandoned stream is closed
        if manager.store.recent("workspace:ws", 10):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert len(fake.requests) == 1
    assert [r.source for r in manager.store.recent("workspace:ws", 10)] == ["openai"]
    assert manager.status("ws", enhanced=False).requests_per_minute.current == 1


def test_a_tracked_call_inside_an_untracked_chat_openai_run_is_its_own(
    clock: ManualClock,
) -> None:
    """The README's setup: ChatOpenAI on its own (untracked) client with the handler, and
    track_openai for embeddings. An embeddings call from the chat stream's loop must not take
    the chat run over: a request claims only a run of its own model and kind of API."""
    fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=20))
    manager = QuotaManager(limits(rpm=100, mode="raise"), clock=clock)
    untracked = ChatOpenAI(model="gpt-4o", api_key="sk-test", base_url="http://fake/v1",  # type: ignore[arg-type]
                           http_client=httpx2.Client(transport=fake.transport()),
                           stream_usage=True)
    _, tracked = _chat_on_tracked_client(manager, fake)
    embed = track_openai(tracked, workspace_id="embed-ws", manager=manager)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="lc-ws")
    for _ in untracked.stream("hi", config={"callbacks": [handler]}):
        embed.embeddings.create(model="text-embedding-3-small", input="x")
    [chat] = manager.store.recent("workspace:lc-ws", 10)
    assert (chat.source, chat.api_method, chat.model) == ("langchain", "chat.completions",
                                                          "gpt-4o-2024-08-06")
    embeddings = manager.store.recent("workspace:embed-ws", 10)
    assert embeddings and {r.api_method for r in embeddings} == {"embeddings"}


def test_pairing_never_lets_a_call_past_a_limit_the_transport_enforces(
    clock: ManualClock,
) -> None:
    """The handler's estimate counts message text only; a request with a large tool schema
    reserves its own, bigger estimate, as it would without the handler."""
    from pydantic import Field, create_model

    big = create_model("Big", **{  # type: ignore[call-overload]
        f"field_{i}": (str, Field(description=f"a fairly long description of field {i} " * 3))
        for i in range(60)
    })
    for callbacks in ([], "handler"):
        fake = FakeOpenAI(FakeUsage(input_tokens=100, output_tokens=20))
        manager = QuotaManager(limits(rpm=None, tpm=2000, mode="raise"), clock=clock)
        llm, _ = _chat_on_tracked_client(manager, fake)
        handler = QuotaCallbackHandler(manager=manager, workspace_id="transport-ws")
        with pytest.raises(RateLimitedError, match="tpm"):
            llm.bind_tools([big]).invoke(
                "hi", config={"callbacks": [handler] if callbacks else []})
        assert fake.requests == []
        assert manager.status("transport-ws", enhanced=False).tokens_per_minute.current == 0
        assert handler.open_runs == 0


def test_a_run_whose_requests_got_no_answer_is_still_recorded_when_paired(
    clock: ManualClock,
) -> None:
    class Timeouts(httpx2.BaseTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            raise httpx2.ReadTimeout("the provider took too long", request=request)

    manager = QuotaManager(limits(rpm=10, mode="raise"), clock=clock)
    client = track_openai(OpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=1,
                                 http_client=httpx2.Client(transport=Timeouts())),
                          workspace_id="transport-ws", manager=manager)
    llm = ChatOpenAI(model="gpt-4o-mini", client=client.chat.completions, root_client=client,
                     api_key="sk-test", max_retries=1)  # type: ignore[arg-type]
    handler = QuotaCallbackHandler(manager=manager, workspace_id="lc-ws")
    with pytest.raises(Exception, match="timed out"):
        llm.invoke("hi", config={"callbacks": [handler]})
    # Each attempt may have run at the provider: the transport counts both (the SDK's retry
    # too), for the run's workspace, at their estimate; the run adds nothing more.
    attempts = sorted(manager.store.recent("workspace:lc-ws", 10), key=lambda r: r.attempt)
    assert [(r.attempt, r.success, r.error_type) for r in attempts] == [
        (0, False, "ReadTimeout"), (1, False, "ReadTimeout")]
    assert all(r.estimated and r.total_tokens > 0 and r.cost for r in attempts)
    assert manager.store.recent("workspace:transport-ws", 10) == []
    assert manager.status("lc-ws", enhanced=False).requests_per_minute.current == 2
    assert manager.store.pending() == 0


@pytest.mark.usefixtures("clean_litellm_callbacks")
def test_litellm_unguarded_sync_calls_are_reserved_counted_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """litellm cannot refuse a sync call from a hook: an unguarded one is still reserved
    (what others check includes it), recorded, and a would-be refusal is counted and logged
    once; a guarded call then is refused."""
    manager = QuotaManager(limits(rpm=3, mode="raise"), clock=ManualClock(T0))
    quota_logger = QuotaLogger(manager=manager, default_workspace="ws")
    litellm.callbacks = [quota_logger]
    fake = FakeOpenAI()
    with fake.serve() as base_url, caplog.at_level("WARNING", "quota_hooks"):
        for _ in range(5):
            litellm.completion(model="openai/gpt-4o-mini", messages=MSG, api_base=base_url,
                               api_key="sk-test")
        assert manager.drain()
        assert len(fake.requests) == 5  # nothing could stop them
        assert quota_logger.unrefused == 2
        assert sum("no hook that can refuse a sync call" in r.message
                   for r in caplog.records) == 1
        assert manager.status("ws", enhanced=False).requests_per_minute.current == 5
        with pytest.raises(RateLimitedError):
            guarded(litellm.completion, quota_logger)(
                model="openai/gpt-4o-mini", messages=MSG, api_base=base_url, api_key="sk-test")
    assert len(fake.requests) == 5 and quota_logger._reservations == {}
