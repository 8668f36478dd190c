"""Group commit (quota_hooks/storage/_batch.py): a lone call goes alone and at once, calls that
arrive while a batch is on the wire share the next one, and each caller gets its own result
or its own error."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from quota_hooks.storage._batch import AsyncGroupCommit, GroupCommit

pytestmark = pytest.mark.unit


def test_a_lone_call_is_sent_alone_on_the_callers_thread() -> None:
    seen: list[tuple[list[int], str]] = []

    def send(calls: Sequence[int]) -> list[int]:
        seen.append((list(calls), threading.current_thread().name))
        return [c * 10 for c in calls]

    batch: GroupCommit[int] = GroupCommit(send)
    assert [batch(i) for i in range(3)] == [0, 10, 20]
    me = threading.current_thread().name
    assert seen == [([0], me), ([1], me), ([2], me)]


def test_calls_that_arrive_meanwhile_share_the_next_batch() -> None:
    gate = threading.Event()
    sizes: list[int] = []

    def send(calls: Sequence[int]) -> list[int]:
        sizes.append(len(calls))
        if len(sizes) == 1:
            gate.wait(5)  # the first batch is "on the wire" while the others queue
        return [c + 1 for c in calls]

    batch: GroupCommit[int] = GroupCommit(send, max_batch=4)
    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = batch(i)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    time.sleep(0.05)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 7)]
    for thread in others:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in [first, *others]:
        thread.join(5)
    assert results == {i: i + 1 for i in range(7)}
    assert sizes[0] == 1 and sum(sizes) == 7 and max(sizes) <= 4
    assert len(sizes) < 7 and batch.batches == len(sizes)


def test_each_caller_gets_its_own_error() -> None:
    def send(calls: Sequence[int]) -> list[object]:
        return [ValueError(f"bad {c}") if c % 2 else c for c in calls]

    batch: GroupCommit[int] = GroupCommit(send)
    assert batch(2) == 2
    with pytest.raises(ValueError, match="bad 3"):
        batch(3)


def test_a_failed_send_fails_every_call_of_its_batch_and_the_next_batch_goes_on() -> None:
    calls = iter([RuntimeError("down"), None])

    def send(batch_calls: Sequence[int]) -> list[int]:
        failure = next(calls)
        if failure is not None:
            raise failure
        return list(batch_calls)

    batch: GroupCommit[int] = GroupCommit(send)
    with pytest.raises(RuntimeError, match="down"):
        batch(1)
    assert batch(2) == 2  # the batcher is not left busy


def test_async_a_lone_call_goes_at_once_and_concurrent_ones_share_batches() -> None:
    sizes: list[int] = []

    async def send(calls: Sequence[int]) -> list[int]:
        sizes.append(len(calls))
        await asyncio.sleep(0.01)
        return [c * 2 for c in calls]

    async def main() -> None:
        batch: AsyncGroupCommit[int] = AsyncGroupCommit(send)
        assert await batch(5) == 10
        assert sizes == [1]
        results = await asyncio.gather(*(batch(i) for i in range(50)))
        assert results == [i * 2 for i in range(50)]
        assert sum(sizes) == 51 and len(sizes) < 10  # 50 calls in a few round trips

    asyncio.run(main())


def test_async_errors_are_each_callers_and_a_failed_send_fails_its_batch() -> None:
    async def send(calls: Sequence[int]) -> list[object]:
        if 99 in calls:
            raise ConnectionError("gone")
        return [KeyError(c) if c == 3 else c for c in calls]

    async def main() -> None:
        batch: AsyncGroupCommit[int] = AsyncGroupCommit(send)
        with pytest.raises(KeyError):
            await batch(3)
        with pytest.raises(ConnectionError):
            await batch(99)
        assert await batch(4) == 4

    asyncio.run(main())
