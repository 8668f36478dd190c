"""A workspace per request, from context: ``quota_hooks.workspace()`` and
``QuotaWorkspaceMiddleware``, read by every adapter when a call names no workspace itself."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import httpx2
import litellm
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI, OpenAI

from quota_hooks import (
    ConfigurationError,
    QuotaManager,
    QuotaPolicy,
    QuotaWorkspaceMiddleware,
    UsageRecord,
    current_workspace,
    track,
    tracked,
    workspace,
)
from quota_hooks.adapters.openai import WORKSPACE_HEADER, track_openai
from quota_hooks.testing import FakeOpenAI

MSG = [{"role": "user", "content": "hi"}]


def by_workspace(manager: QuotaManager) -> Counter[str]:
    return Counter({ws: manager.status(ws, enhanced=False).requests_per_day.current
                    for ws in manager.workspaces()})


def records(manager: QuotaManager, ws: str) -> list[UsageRecord]:
    return list(reversed(manager.store.recent(f"workspace:{ws}", 1000)))


@pytest.fixture
def manager() -> QuotaManager:
    return QuotaManager(QuotaPolicy.unlimited(), alert_history=0)


# ---------------------------------------------------------------------- the context itself
@pytest.mark.unit
def test_blocks_nest_and_follow_await_gather_and_copied_threads() -> None:
    assert current_workspace() is None
    with workspace("outer", scopes={"team": "ml"}) as outer:
        assert outer.workspace_id == "outer" and outer.scopes == {"team": "ml"}
        with workspace("inner"):
            assert current_workspace().workspace_id == "inner"  # type: ignore[union-attr]
        assert current_workspace() is outer

        seen: dict[str, Any] = {}

        def look(name: str) -> None:
            found = current_workspace()
            seen[name] = None if found is None else found.workspace_id

        copied = threading.Thread(target=contextvars.copy_context().run, args=(look, "copied"))
        plain = threading.Thread(target=look, args=("plain",))
        copied.start(), plain.start()
        copied.join(), plain.join()
        assert seen == {"copied": "outer", "plain": None}  # a plain thread starts empty

    async def task(name: str) -> str:
        async with workspace(name):
            await asyncio.sleep(0.001)
            inner = current_workspace()
            assert inner is not None
            return inner.workspace_id

    async def main() -> list[str]:
        return await asyncio.gather(*(task(f"w{i}") for i in range(50)))

    assert asyncio.run(main()) == [f"w{i}" for i in range(50)]
    assert current_workspace() is None


@pytest.mark.unit
@pytest.mark.parametrize(("args", "kwargs", "says"), [
    (("",), {}, "non-empty workspace id"),
    ((7,), {}, "non-empty workspace id"),
    (("a",), {"scopes": {"team": 1}}, "scopes must map kinds to values"),
    (("a",), {"scopes": "team:ml"}, "scopes must map kinds to values"),
])
def test_bad_arguments_are_named(args: tuple[Any, ...], kwargs: dict[str, Any],
                                 says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        workspace(*args, **kwargs)


# ---------------------------------------------------------------------- the adapters
def fake_client(fake: FakeOpenAI) -> OpenAI:
    """A real OpenAI client on ``fake``'s transport, without retries."""
    return OpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=0,
                  http_client=httpx2.Client(transport=fake.transport()))


@pytest.mark.unit
def test_openai_the_call_then_the_context_then_the_wrap(manager: QuotaManager) -> None:
    fake = FakeOpenAI()
    client = track_openai(
        fake_client(fake),
        workspace_id="wrapped", scopes={"team": "wrap-team"}, manager=manager)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    with workspace("acme", scopes={"user": "u-7"}):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG,  # type: ignore[arg-type]
                                       extra_headers={WORKSPACE_HEADER: "named"})
    assert by_workspace(manager) == {"wrapped": 1, "acme": 1, "named": 1}
    [acme] = records(manager, "acme")
    assert acme.scopes == {"user": "u-7"}  # the context's scopes, not the wrap's
    assert records(manager, "named")[0].scopes == {"team": "wrap-team"}
    assert all(not h.lower().startswith("x-quota-hooks") for *_, sent in fake.requests
               for h in sent)


@pytest.mark.unit
def test_langchain_the_metadata_then_the_context_then_the_handler(
        manager: QuotaManager) -> None:
    from langchain_openai import ChatOpenAI

    from quota_hooks.adapters.langchain import QuotaCallbackHandler

    fake = FakeOpenAI()
    model = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", base_url="http://fake/v1",
                       max_retries=0, http_client=httpx2.Client(transport=fake.transport()),
                       http_async_client=httpx2.AsyncClient(transport=fake.transport()),
                       stream_usage=True)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="handler")
    config: Any = {"callbacks": [handler]}
    model.invoke("hi", config=config)
    with workspace("acme"):
        model.invoke("hi", config=config)
        model.invoke("hi", config={**config, "metadata": {"workspace_id": "meta"}})

        async def two() -> None:  # async runs in the block too
            await asyncio.gather(model.ainvoke("hi", config=config),
                                 model.ainvoke("hi", config=config))

        asyncio.run(two())
    assert by_workspace(manager) == {"handler": 1, "acme": 3, "meta": 1}


@pytest.mark.unit
def test_litellm_the_metadata_then_the_context_then_the_default(
        manager: QuotaManager, clean_litellm_callbacks: None) -> None:
    from quota_hooks.adapters.litellm import QuotaLogger

    litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="default-ws")]
    litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="x")
    with workspace("acme", scopes={"user": "u-9"}):
        litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="x")
        litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="x",
                           metadata={"workspace_id": "meta"})

    async def calls() -> None:
        async def one(name: str) -> None:
            async with workspace(name):
                await litellm.acompletion(model="gpt-4o-mini", messages=MSG, mock_response="x")

        await asyncio.gather(*(one(f"a{i % 3}") for i in range(9)))
        assert await manager.adrain(10)  # litellm logs on this loop, after the calls return

    asyncio.run(calls())
    assert manager.drain(10)
    assert by_workspace(manager) == {"default-ws": 1, "acme": 1, "meta": 1, "a0": 3, "a1": 3,
                                     "a2": 3}
    assert records(manager, "acme")[0].scopes == {"user": "u-9"}


# ---------------------------------------------------------------------- the middleware
def test_1000_concurrent_requests_of_two_workspaces_through_one_client_never_cross(
        manager: QuotaManager) -> None:
    """A FastAPI app charges each request to the workspace its header names, through one
    shared tracked client: 1,000 concurrent requests, none charged to the other workspace;
    sync endpoints (a worker thread) too. (The provider is FakeOpenAI in process: what is
    under test is the context, which a socket does not change; the wire tests use sockets.)"""
    fake = FakeOpenAI()
    shared = track_openai(
        AsyncOpenAI(api_key="sk-test", base_url="http://fake/v1", max_retries=0,
                    http_client=httpx2.AsyncClient(transport=fake.transport())),
        workspace_id="nobody", manager=manager)
    sync_shared = track_openai(
        fake_client(fake),
        workspace_id="nobody", manager=manager)
    app = FastAPI()
    app.add_middleware(QuotaWorkspaceMiddleware,
                       resolve=lambda request: request.headers.get("x-tenant"))

    @app.get("/ask")
    async def ask() -> dict[str, str]:
        await shared.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
        found = current_workspace()
        return {"charged": found.workspace_id if found else "none"}

    @app.get("/ask-sync")
    def ask_sync() -> dict[str, str]:
        sync_shared.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
        return {"ok": "yes"}

    async def run() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            limit = asyncio.Semaphore(100)

            async def one(i: int) -> str:
                tenant = "alpha" if i % 2 else "beta"
                async with limit:
                    path = "/ask-sync" if i % 10 in (0, 5) else "/ask"
                    answer = await client.get(path, headers={"x-tenant": tenant})
                assert answer.status_code == 200, answer.text
                assert answer.json().get("charged", tenant) == tenant
                return tenant

            return await asyncio.gather(*(one(i) for i in range(1000)))

    tenants = asyncio.run(run())
    assert by_workspace(manager) == Counter(tenants) == {"alpha": 500, "beta": 500}


# ---------------------------------------------------------------------- the usage of a block
def _sum(records_: list[UsageRecord], manager: QuotaManager) -> tuple[int, int, Any]:
    total = sum((manager.prices.cost(r).usd or 0 for r in records_), start=Decimal(0))
    return len(records_), sum(r.total_tokens for r in records_), total


@pytest.mark.unit
def test_track_sums_what_every_adapter_recorded_inside_and_nested_blocks_add_up(
        manager: QuotaManager, clean_litellm_callbacks: None) -> None:
    from langchain_openai import ChatOpenAI

    from quota_hooks.adapters.langchain import QuotaCallbackHandler
    from quota_hooks.adapters.litellm import QuotaLogger

    fake = FakeOpenAI()
    client = track_openai(
        fake_client(fake),
        workspace_id="ws", manager=manager)
    model = ChatOpenAI(model="gpt-4o", api_key="sk-test", base_url="http://fake/v1",
                       max_retries=0, http_client=httpx2.Client(transport=fake.transport()),
                       stream_usage=True)
    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="ws")]
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    with track(manager=manager) as outer:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
        with track() as inner:
            model.invoke("hi", config={"callbacks": [handler]})
            litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="hi there")
            assert manager.drain(10)
        manager.record(UsageRecord(workspace_id="ws", model="my-own-llm", input_tokens=5))
    assert manager.drain(10)
    everything = records(manager, "ws")
    assert len(everything) == 5
    in_outer, in_inner = everything[1:], everything[2:4]
    assert (inner.requests, inner.total_tokens, inner.cost_usd) == _sum(in_inner, manager)
    assert (outer.requests, outer.total_tokens) == (4, sum(r.total_tokens for r in in_outer))
    assert outer.cost_usd == _sum(in_outer[:3], manager)[2] and outer.unpriced == 1
    assert {name: m.requests for name, m in outer.by_model.items()} == Counter(
        r.model for r in in_outer)
    assert outer.by_model["my-own-llm"].unpriced == 1
    assert inner.input_tokens + inner.output_tokens == inner.total_tokens


@pytest.mark.unit
def test_track_counts_only_its_manager_and_async_litellm_calls_of_the_block(
        manager: QuotaManager, clean_litellm_callbacks: None) -> None:
    from quota_hooks.adapters.litellm import QuotaLogger

    other = QuotaManager(QuotaPolicy.unlimited(), alert_history=0)
    litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="ws")]

    async def main() -> tuple[Any, Any]:
        async def one(n: int) -> Any:
            async with track() as mine:
                for _ in range(n):
                    await litellm.acompletion(model="gpt-4o-mini", messages=MSG,
                                              mock_response="x")
                assert await manager.adrain(10)  # logged on this loop, after the calls
                return mine

        with track(manager=other) as elsewhere:
            found = await asyncio.gather(one(1), one(3))
        return found, elsewhere

    (first, second), elsewhere = asyncio.run(main())
    assert (first.requests, second.requests, elsewhere.requests) == (1, 3, 0)
    other.close()


@pytest.mark.unit
def test_tracked_decorates_sync_and_async_functions(manager: QuotaManager) -> None:
    seen: list[Any] = []

    @tracked(workspace_id="acme", manager=manager, on_usage=seen.append)
    def work(n: int) -> str:
        for _ in range(n):
            manager.record(UsageRecord(workspace_id=current_workspace().workspace_id,  # type: ignore[union-attr]
                                       model="gpt-4o-mini", input_tokens=10))
        return "done"

    @tracked(on_usage=seen.append)
    async def awork() -> None:
        await manager.arecord(UsageRecord(workspace_id="beta", model="gpt-4o-mini",
                                          input_tokens=1))

    assert work(3) == "done"
    asyncio.run(awork())
    assert [(u.requests, u.input_tokens) for u in seen] == [(3, 30), (1, 1)]
    assert by_workspace(manager) == {"acme": 3, "beta": 1}
    with pytest.raises(ConfigurationError, match="non-empty workspace id"):
        tracked(workspace_id="")


# ---------------------------------------------------------------------- from a review
@pytest.mark.unit
def test_one_block_object_entered_at_once_in_many_threads_and_tasks_stays_apart() -> None:
    from concurrent.futures import ThreadPoolExecutor

    acme, usage = workspace("acme"), track()
    barrier = threading.Barrier(4)

    def job(enter: bool) -> Any:
        if not enter:
            barrier.wait()
            return current_workspace()
        with acme, usage as mine:
            barrier.wait()
            found = current_workspace()
        return found, mine, current_workspace()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(job, [True, True, False, False]))
        later = [pool.submit(current_workspace).result() for _ in range(4)]  # no leak
    inside = [r for r in results if isinstance(r, tuple)]
    assert all(found.workspace_id == "acme" and after is None for found, _, after in inside)
    assert inside[0][1] is not inside[1][1]  # each entry has its own usage
    assert results[2:] == [None, None] and later == [None] * 4

    async def enter_in_tasks() -> list[str]:
        async def one() -> str:
            async with acme:
                await asyncio.sleep(0.001)
                return current_workspace().workspace_id  # type: ignore[union-attr]

        return await asyncio.gather(*(one() for _ in range(20)))

    assert asyncio.run(enter_in_tasks()) == ["acme"] * 20
    with pytest.raises(RuntimeError, match="without being entered"):
        acme.__exit__(None, None, None)
    with pytest.raises(ConfigurationError, match="non-empty workspace id"):
        workspace("   ")
    from quota_hooks import WorkspaceContext

    with pytest.raises(ConfigurationError, match="scopes must map"):
        WorkspaceContext("acme", {"user": 5})  # type: ignore[dict-item]


@pytest.mark.unit
def test_litellm_a_calls_own_user_wins_and_a_call_id_used_again_is_a_new_call(
        manager: QuotaManager, clean_litellm_callbacks: None) -> None:
    from quota_hooks.adapters.litellm import QuotaLogger

    logger = QuotaLogger(manager=manager, default_workspace="default-ws")
    litellm.callbacks = [logger]
    with workspace("acme", scopes={"user": "u-7", "team": "ml"}):
        litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="x", user="u-9")
    assert manager.drain(10)
    assert records(manager, "acme")[0].scopes == {"user": "u-9", "team": "ml"}
    assert len(logger._contexts) == 0  # a success forgets its call
    for name in ("alpha", "beta", "gamma"):
        with workspace(name):
            litellm.completion(model="gpt-4o-mini", messages=MSG, mock_response="x",
                               litellm_call_id="same-id")
        assert manager.drain(10)
    assert {ws: n for ws, n in by_workspace(manager).items() if ws != "acme"} == {
        "alpha": 1, "beta": 1, "gamma": 1}


@pytest.mark.unit
def test_openai_a_calls_scopes_header_adds_to_the_blocks(manager: QuotaManager) -> None:
    from quota_hooks.adapters.openai import SCOPES_HEADER

    fake = FakeOpenAI()
    client = track_openai(
        fake_client(fake),
        workspace_id="wrapped", manager=manager)
    with workspace("acme", scopes={"user": "u-7"}):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG,  # type: ignore[arg-type]
                                       extra_headers={SCOPES_HEADER: "feature=chat"})
    assert records(manager, "acme")[0].scopes == {"user": "u-7", "feature": "chat"}


@pytest.mark.unit
def test_the_middleware_gives_the_resolver_the_request_and_treats_empty_as_none(
        manager: QuotaManager) -> None:
    from fastapi.testclient import TestClient
    from starlette.requests import Request

    seen: list[Any] = []

    def resolve(request: Any) -> str:
        seen.append(type(request))
        return request.headers.get("x-tenant", "")

    app = FastAPI()
    app.add_middleware(QuotaWorkspaceMiddleware, resolve=resolve)

    @app.get("/who")
    def who() -> dict[str, Any]:
        found = current_workspace()
        return {"ws": found.workspace_id if found else None}

    with TestClient(app) as client:
        assert client.get("/who", headers={"x-tenant": "acme"}).json() == {"ws": "acme"}
        assert client.get("/who", headers={"x-tenant": ""}).json() == {"ws": None}
        assert client.get("/who").json() == {"ws": None}
    assert seen and all(kind is Request for kind in seen)


@pytest.mark.unit
def test_a_calls_own_workspace_header_is_the_id_as_written(manager: QuotaManager) -> None:
    """Only track_openai's own header is URL-quoted: "a%41" on a call is the workspace
    "a%41", not "aA" (which would charge another workspace's limits)."""
    fake = FakeOpenAI()
    client = track_openai(
        fake_client(fake),
        workspace_id="wrapped é", manager=manager)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG,  # type: ignore[arg-type]
                                   extra_headers={WORKSPACE_HEADER: "a%41"})
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    assert by_workspace(manager) == {"a%41": 1, "wrapped é": 1}
