"""Pairing: which HTTP attempt takes an outer run's reservation, and when a run's mark goes.

The rules are in :mod:`quota_hooks.adapters._pairing` (and docs/pairing.md). The first part
drives the module directly from a table of scenarios; the second drives the real
langchain-core (and langchain-openai on a tracked client over a real 127.0.0.1 server) and
checks that every run's mark is gone from the caller's context when the run ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from quota_hooks.adapters import _pairing
from quota_hooks.adapters._pairing import (
    MAX_MARKS,
    Claim,
    RunGroup,
    RunMark,
    claim,
    group_for,
    held_marks,
    no_marks,
    open_marks,
    push_mark,
)
from quota_hooks.storage.base import Reservation, UsageDelta

MINI, BIG = "gpt-4o-mini", "gpt-4o"


def reservation(name: str, ttl: float = 3600.0) -> Reservation:
    return Reservation(id=name, scopes=("workspace:ws",), delta=UsageDelta(requests=1, tokens=10),
                       at=1000.0, month="2026-01", expires_at=1000.0 + ttl)


def links() -> int:
    """Links the current context's stack holds (live, ended or expired), none spliced."""
    count, link = 0, _pairing._top.get()
    while link is not None:
        count, link = count + 1, link.below
    return count


# ------------------------------------------------------------------------- the rule table
@dataclass(frozen=True)
class Push:
    """A run starts: its mark opens, holding reservation ``r-<name>`` unless ``reserved``
    is False."""

    name: str
    model: str | None = MINI
    chat: bool = True
    reserved: bool = True
    group: str | None = None
    ttl: float | None = None


@dataclass(frozen=True)
class Attempt:
    """An HTTP attempt of the transport asks for its run; it must get run ``mark`` and the
    reservation of run ``takes`` (None: on its own / reserves for itself)."""

    model: str | None
    method: str
    mark: str | None
    takes: str | None
    retry: int = 0
    prompts: int = 1


@dataclass(frozen=True)
class Close:
    """A run ends: its mark closes and gives back ``returns``'s reservation (or None: an
    attempt took it)."""

    name: str
    returns: str | None


@dataclass(frozen=True)
class State:
    """What the context holds now: the open marks, oldest first, and which are claimed."""

    open: tuple[str, ...]
    claimed: tuple[str, ...] = ()


Step = Push | Attempt | Close | State

SCENARIOS: list[tuple[str, list[Step], str]] = [
    ("one run, one request", [
        Push("A"), Attempt(MINI, "chat.completions", "A", "A"), State(("A",), ("A",)),
    ], "the request takes the run's reservation"),
    ("a responses request claims a chat run", [
        Push("A"), Attempt(MINI, "responses", "A", "A"),
    ], "chat runs pair with chat.completions and responses"),
    ("nested runs, same model", [
        Push("outer"), Attempt(MINI, "chat.completions", "outer", "outer"),
        Push("inner"), Attempt(MINI, "chat.completions", "inner", "inner"),
        Close("inner", None), Close("outer", None), State(()),
    ], "the enclosing run was claimed by its own request: the inner request takes the inner run"),
    ("nested runs, another model", [
        Push("outer", BIG), Attempt(BIG, "chat.completions", "outer", "outer"),
        Push("inner", MINI), Attempt(MINI, "chat.completions", "inner", "inner"),
    ], "each request claims the run of its own model"),
    ("an inner call of another method inside a run", [
        Push("A"), Attempt("text-embedding-3-small", "embeddings", None, None),
        Attempt(MINI, "embeddings", None, None), State(("A",)),
    ], "embeddings are never paired: both keep their own records"),
    ("a batch of 3 prompts", [
        Push("p1", group="g"), Push("p2", group="g"), Push("p3", group="g"),
        Attempt(MINI, "chat.completions", "p1", "p1"),
        Attempt(MINI, "chat.completions", "p2", "p2"),
        Attempt(MINI, "chat.completions", "p3", "p3"),
        Attempt(MINI, "chat.completions", None, None),
    ], "one request per prompt, each takes its prompt's reservation; a 4th is on its own"),
    ("one completions request carrying 3 prompts", [
        Push("p1", chat=False, group="g"), Push("p2", chat=False, group="g"),
        Push("p3", chat=False, group="g"),
        Attempt(MINI, "completions", "p1", "p1", prompts=3),
        State(("p1", "p2", "p3"), ("p1", "p2", "p3")),
        Close("p1", None), Close("p2", "p2"), Close("p3", "p3"), State(()),
    ], "it claims the 3 runs and takes the first's reservation; the others go back at run end"),
    ("a batch where one prompt was never sent", [
        Push("p1", group="g"), Push("p2", group="g"),
        Attempt(MINI, "chat.completions", "p1", "p1"),
        Close("p1", None), Close("p2", "p2"), State(()),
    ], "the unclaimed prompt's reservation goes back when its run ends"),
    ("retries of a run", [
        Push("A"), Attempt(MINI, "chat.completions", "A", "A"),
        Attempt(MINI, "chat.completions", "A", None, retry=1),
        Attempt(MINI, "chat.completions", "A", None, retry=2),
    ], "a retry belongs to the run but reserves for itself"),
    ("a retry belongs to the latest claimed run", [
        Push("A"), Attempt(MINI, "chat.completions", "A", "A"),
        Push("B"), Attempt(MINI, "chat.completions", "B", "B"),
        Attempt(MINI, "chat.completions", "B", None, retry=1),
    ], "the newest run whose first attempt went out"),
    ("a retry with no claimed run", [
        Push("A"), Attempt(MINI, "chat.completions", None, None, retry=1),
        State(("A",)), Attempt(MINI, "chat.completions", "A", "A"),
    ], "on its own; the run stays free for its first attempt"),
    ("a model that does not match", [
        Push("A", MINI), Attempt(BIG, "chat.completions", None, None), State(("A",)),
    ], "never paired: the run records itself, the request too"),
    ("another provider's run", [
        Push("A", "claude-3-5-sonnet-latest"), Attempt(MINI, "chat.completions", None, None),
        Push("B", None), Attempt(MINI, "chat.completions", None, None),
        State(("A", "B")),
    ], "a run of another model, or of no known model, is never taken over"),
    ("a chat run and a completions request", [
        Push("plain", chat=False), Attempt(MINI, "chat.completions", None, None),
        Push("chat", chat=True), Attempt(MINI, "completions", "plain", "plain"),
        Attempt(MINI, "completions", None, None), Attempt(MINI, "responses", "chat", "chat"),
    ], "a chat run pairs with chat requests only, a plain-LLM run with completions only"),
    ("a request without a model", [
        Push("A"), Attempt(None, "chat.completions", None, None), State(("A",)),
    ], "never paired"),
    ("a run without a reservation", [
        Push("A", reserved=False), Attempt(MINI, "chat.completions", "A", None),
        State(("A",), ("A",)), Close("A", None),
    ], "claimed (counted once, in the run's workspace) but the request reserves for itself"),
    ("a stream closed early", [
        Push("A"), Attempt(MINI, "chat.completions", "A", "A"),
        Close("A", None), State(()),
        Attempt(MINI, "chat.completions", None, None),
        Attempt(MINI, "chat.completions", None, None, retry=1),
    ], "the run ends first; the attempt keeps its reservation; the closed mark is never claimed"),
    ("a run that ended before any request", [
        Push("A"), Close("A", "A"), Attempt(MINI, "chat.completions", None, None),
    ], "its reservation goes back; a later request is on its own"),
    ("a mark past its reservation's life", [
        Push("A", ttl=0.0), Attempt(MINI, "chat.completions", None, None), State(()),
        Close("A", "A"),
    ], "ignored by claims; its run still gives the reservation back when it ends"),
    ("runs that end out of order", [
        Push("A"), Push("B"), Push("C"), Close("B", "B"), State(("A", "C")),
        Close("C", "C"), Close("A", "A"), State(()),
    ], "each run's mark leaves when its run ends, whatever the order"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("steps", "outcome"), [(s, o) for _, s, o in SCENARIOS],
                         ids=[name for name, _, _ in SCENARIOS])
def test_pairing_rules(steps: list[Step], outcome: str) -> None:
    marks: dict[str, RunMark] = {}
    names: dict[int, str] = {}
    groups: dict[str, RunGroup] = {}
    for step in steps:
        if isinstance(step, Push):
            group = groups.setdefault(step.group, RunGroup(None, 3)) if step.group else RunGroup()
            mark = RunMark(reservation(step.name) if step.reserved else None, workspace_id="ws",
                           model=step.model, chat=step.chat, group=group, ttl=step.ttl)
            push_mark(mark)
            marks[step.name], names[id(mark)] = mark, step.name
        elif isinstance(step, Attempt):
            found = claim(step.model, step.method, step.retry, step.prompts)
            got = (names[id(found.mark)] if found.mark is not None else None,
                   found.reservation.id if found.reservation is not None else None)
            assert got == (step.mark, step.takes), f"{step} ({outcome})"
            assert found.takes_reservation is (step.takes is not None)
        elif isinstance(step, Close):
            back = marks[step.name].close()
            assert (back.id if back is not None else None) == step.returns, f"{step} ({outcome})"
            assert marks[step.name].close() is None  # closing twice gives nothing back twice
        else:
            live = open_marks()
            assert [names[id(m)] for m in live] == list(step.open), outcome
            assert tuple(names[id(m)] for m in live if m.claimed) == step.claimed, outcome
    for mark in marks.values():
        mark.close()
    assert held_marks() == () and open_marks() == []  # every run ended: nothing is left
    assert links() == 0


# ------------------------------------------------------------------------- marks at run end
@pytest.mark.unit
def test_a_run_that_ends_in_its_own_context_leaves_nothing_behind() -> None:
    for _ in range(5000):
        mark = RunMark(reservation("r"), model=MINI)
        push_mark(mark)
        assert held_marks() == (mark,)
        mark.close()
        assert held_marks() == ()
    assert _pairing._top.get() is None


@pytest.mark.unit
def test_a_run_that_ends_in_a_child_task_leaves_its_parent() -> None:
    """LangChain's async chat models end a run in a task of their own (asyncio.gather)."""

    async def main() -> tuple[int, int]:
        for _ in range(2000):
            mark = RunMark(reservation("r"), model=MINI)
            push_mark(mark)
            async def end(mark: RunMark = mark) -> None:
                assert open_marks() == [mark]  # the child sees its parent's run
                mark.close()

            await asyncio.gather(end())
        return len(held_marks()), links()

    assert asyncio.run(main()) == (0, 1)  # at most one empty link, no mark


@pytest.mark.unit
def test_a_run_that_ends_in_another_thread_leaves_the_context_that_started_it() -> None:
    marks = [RunMark(reservation(str(i)), model=MINI) for i in range(3)]
    for mark in marks:
        push_mark(mark)
    worker = threading.Thread(target=marks[1].close)
    worker.start()
    worker.join()
    assert held_marks() == (marks[0], marks[2])
    for mark in marks:
        mark.close()
    assert held_marks() == ()


@pytest.mark.unit
def test_runs_that_never_end_are_bounded_per_context() -> None:
    marks = [RunMark(None, model=MINI) for _ in range(3 * MAX_MARKS)]
    for mark in marks:
        push_mark(mark)
        assert links() <= MAX_MARKS
    live = open_marks()
    assert live[-1] is marks[-1] and len(live) >= MAX_MARKS // 2  # the newest are kept
    assert claim(MINI, "chat.completions").mark is live[0]


@pytest.mark.unit
def test_no_marks_gives_a_clean_context_and_restores_it() -> None:
    mark = RunMark(reservation("r"), model=MINI)
    push_mark(mark)
    with no_marks():
        assert held_marks() == ()
        assert claim(MINI, "chat.completions") == Claim()
    assert held_marks() == (mark,)


@pytest.mark.unit
def test_a_marks_ttl_is_its_reservations_life() -> None:
    assert RunMark(reservation("r", ttl=90.0)).ttl == 90.0
    assert RunMark(None).ttl == _pairing.DEFAULT_MARK_TTL
    old = RunMark(reservation("r", ttl=90.0), opened=time.monotonic() - 91)
    assert not old.live() and RunMark(reservation("r", ttl=90.0)).live()


# ------------------------------------------------------------------------- isolation
@pytest.mark.unit
def test_threads_see_no_marks_of_another_thread() -> None:
    main = RunMark(reservation("main"), model=MINI)
    push_mark(main)
    seen: dict[str, Any] = {}

    def fresh_thread() -> None:  # a new thread starts with an empty context
        seen["fresh"] = open_marks()
        own = RunMark(reservation("own"), model=MINI)
        push_mark(own)
        seen["fresh claim"] = claim(MINI, "chat.completions").mark is own

    def copied_context() -> None:  # a pool thread running a copy of the caller's context
        seen["copied"] = open_marks()
        child = RunMark(reservation("child"), model=BIG)
        push_mark(child)
        seen["child"] = child

    for thread in (threading.Thread(target=fresh_thread),
                   threading.Thread(target=contextvars.copy_context().run, args=(copied_context,))):
        thread.start()
        thread.join()
    assert seen["fresh"] == [] and seen["fresh claim"]
    assert seen["copied"] == [main]
    assert open_marks() == [main]  # neither thread's run shows in this one
    assert claim(BIG, "chat.completions") == Claim()  # the child's run is not ours to claim
    assert claim(MINI, "chat.completions").mark is main


@pytest.mark.unit
def test_asyncio_tasks_share_their_parents_marks_never_each_others() -> None:
    async def main() -> None:
        parent = RunMark(reservation("parent"), model=BIG)
        push_mark(parent)
        started = asyncio.Barrier(2)

        async def task(name: str) -> tuple[list[RunMark], Claim, RunMark]:
            own = RunMark(reservation(name), model=MINI)
            push_mark(own)
            await started.wait()  # both tasks' runs are open now
            seen = open_marks()
            found = claim(MINI, "chat.completions")
            own.close()
            return seen, found, own

        (seen1, got1, own1), (seen2, got2, own2) = await asyncio.gather(task("a"), task("b"))
        assert seen1 == [parent, own1] and seen2 == [parent, own2]
        assert got1.mark is own1 and got2.mark is own2  # each claims its own run
        assert got1.reservation is not None and got1.reservation.id == "a"
        assert open_marks() == [parent]
        assert claim(BIG, "chat.completions").mark is parent
        parent.close()
        assert held_marks() == ()

    asyncio.run(main())


@pytest.mark.unit
def test_group_for_joins_the_prompts_of_one_generate() -> None:
    marks: list[RunMark] = []
    for _ in range(3):
        group = group_for("parent", 3)
        assert (group is marks[0].group) if marks else group.members == 0
        mark = RunMark(group=group, model=MINI)
        push_mark(mark)
        marks.append(mark)
    assert marks[0].group.full()
    assert group_for("parent", 3) is not marks[0].group  # the next generate() of that parent
    assert group_for("other", 3) is not marks[0].group
    assert group_for("parent", 1) is not marks[0].group


# ------------------------------------------------------------------------- real LangChain
_langchain = pytest.importorskip("langchain_core")

from langchain_core.language_models.fake_chat_models import (  # noqa: E402
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord  # noqa: E402
from quota_hooks.adapters.langchain import QuotaCallbackHandler  # noqa: E402
from quota_hooks.testing import FakeOpenAI, FakeUsage, ManualClock  # noqa: E402

RUNS = 2000
#: Limits that are enforced (every run and request reserves) but never reached.
ROOMY = QuotaPolicy(rpm=None, rpd=None, tpm=10**12, tpd=10**12, monthly_budget_usd=None)
USAGE = FakeUsage(input_tokens=20, output_tokens=10)


@pytest.fixture
def roomy() -> QuotaManager:
    return QuotaManager(ROOMY, clock=ManualClock(1_767_225_600.0))


def counting(manager: QuotaManager) -> Counter[str]:
    """The sources of every record ``manager`` gets (sync and async)."""
    sources: Counter[str] = Counter()
    record, arecord = manager.record, manager.arecord

    def spy(rec: UsageRecord, *args: Any, **kwargs: Any) -> None:
        sources[rec.source] += 1
        record(rec, *args, **kwargs)

    async def aspy(rec: UsageRecord, *args: Any, **kwargs: Any) -> None:
        sources[rec.source] += 1
        await arecord(rec, *args, **kwargs)

    manager.record = spy  # type: ignore[method-assign]
    manager.arecord = aspy  # type: ignore[method-assign]
    return sources


def fake_model(handler: QuotaCallbackHandler, n: int) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage("hello")] * n), callbacks=[handler])


@pytest.mark.slow
def test_2000_invokes_leave_no_mark(roomy: QuotaManager) -> None:
    handler = QuotaCallbackHandler(manager=roomy, workspace_id="ws")
    sources = counting(roomy)
    model = fake_model(handler, RUNS)
    for _ in range(RUNS):
        model.invoke("hi")
    assert held_marks() == () and links() == 0  # (976 marks were left before the fix)
    assert handler.open_runs == 0 and roomy.store.pending() == 0
    assert sources == {"langchain": RUNS}


@pytest.mark.slow
def test_2000_ainvokes_leave_no_mark(roomy: QuotaManager) -> None:
    handler = QuotaCallbackHandler(manager=roomy, workspace_id="ws")
    sources = counting(roomy)
    model = fake_model(handler, RUNS)

    async def main() -> tuple[int, int]:
        for _ in range(RUNS):
            await model.ainvoke("hi")
        return len(held_marks()), links()

    marks, held = asyncio.run(main())
    assert marks == 0 and held <= 1  # LangChain ends the run in a child task: one empty link
    assert handler.open_runs == 0 and roomy.store.pending() == 0
    assert sources == {"langchain": RUNS}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with FakeOpenAI(USAGE).serve() as base_url:
        yield base_url


def paired(manager: QuotaManager, base_url: str, *, sync: bool = True) -> Any:
    """A ChatOpenAI on a tracked client (a real socket), with the handler registered too."""
    import openai
    from langchain_openai import ChatOpenAI

    from quota_hooks.adapters.openai import track_openai

    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws")
    client = track_openai(
        (openai.OpenAI if sync else openai.AsyncOpenAI)(
            api_key="sk-test", base_url=base_url, max_retries=0),
        workspace_id="ws", manager=manager)
    chat = {"client": client.chat.completions} if sync else {
        "async_client": client.chat.completions}
    return ChatOpenAI(model=MINI, api_key="sk-test", base_url=base_url, callbacks=[handler],
                      **chat), handler


def assert_counted_once(manager: QuotaManager, sources: Counter[str], calls: int) -> None:
    assert sources == {"openai": calls}  # the transport records, the handler adds nothing
    status = manager.status("ws", enhanced=False)
    assert status.requests_per_day.current == calls
    assert status.tokens_per_day.current == calls * 30
    assert manager.store.pending() == 0


@pytest.mark.slow
def test_2000_paired_invokes_count_once_and_leave_no_mark(
    roomy: QuotaManager, server: str
) -> None:
    sources = counting(roomy)
    llm, handler = paired(roomy, server)
    for _ in range(RUNS):
        llm.invoke("hi")
    assert held_marks() == () and links() == 0
    assert handler.open_runs == 0
    assert_counted_once(roomy, sources, RUNS)


@pytest.mark.slow
def test_2000_paired_ainvokes_count_once_and_leave_no_mark(
    roomy: QuotaManager, server: str
) -> None:
    sources = counting(roomy)
    llm, handler = paired(roomy, server, sync=False)

    async def main() -> tuple[int, int]:
        for _ in range(RUNS):
            await llm.ainvoke("hi")
        return len(held_marks()), links()

    marks, held = asyncio.run(main())
    assert marks == 0 and held <= 1
    assert handler.open_runs == 0
    assert_counted_once(roomy, sources, RUNS)


async def _styles(llm: Any, style: str) -> int:
    """One call of ``style``; returns the HTTP requests it makes."""
    if style == "invoke":
        llm.invoke("hi")
    elif style == "ainvoke":
        await llm.ainvoke("hi")
    elif style == "stream":
        assert "".join(str(c.content) for c in llm.stream("hi"))
    elif style == "astream":
        async for _ in llm.astream("hi"):
            pass
    elif style == "generate of 3 prompts":
        llm.generate([[HumanMessage(t)] for t in "abc"])
        return 3
    elif style == "agenerate of 3 prompts":
        await llm.agenerate([[HumanMessage(t)] for t in "abc"])
        return 3
    elif style == "stream closed early":
        stream = llm.stream("hi")
        next(stream)
        stream.close()
    elif style == "astream closed early":
        astream = llm.astream("hi")
        await astream.__anext__()
        await astream.aclose()
    return 1


STYLES = ["invoke", "ainvoke", "stream", "astream", "generate of 3 prompts",
          "agenerate of 3 prompts", "stream closed early", "astream closed early"]


@pytest.mark.parametrize("style", STYLES)
def test_every_call_style_counts_once_and_leaves_no_mark(
    roomy: QuotaManager, server: str, style: str
) -> None:
    sources = counting(roomy)
    llm, handler = paired(roomy, server, sync=not style.startswith("a"))

    async def main() -> tuple[int, int, int]:
        calls = 0
        for _ in range(20):
            calls += await _styles(llm, style)
        await asyncio.sleep(0)  # a closed stream's transport settles on the next turn
        return calls, len(held_marks()), links()

    calls, marks, held = asyncio.run(main())
    assert marks == 0 and held <= 1
    assert handler.open_runs == 0
    assert sum(sources.values()) == calls and set(sources) == {"openai"}
    status = roomy.status("ws", enhanced=False)
    assert status.requests_per_day.current == calls
    if "closed early" not in style:
        assert status.tokens_per_day.current == calls * 30
