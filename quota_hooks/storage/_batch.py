"""Group commit: concurrent calls from one process share a round trip, a lone call adds none.

A caller that finds nobody sending becomes the leader: it sends what is queued (its own call
and any that arrived meanwhile) as one batch, hands each caller its result, and passes the
lead to the first caller still waiting, who sends the next batch. While one batch is on the
wire the next one fills, so under load the calls per round trip grow with the number in
flight, and a lone call is sent at once, on its own thread, as if there were no batching
(the pattern of a database's group commit).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["AsyncGroupCommit", "GroupCommit"]

Call = TypeVar("Call")


class _Slot(Generic[Call]):
    __slots__ = ("call", "event", "lead", "outcome")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.event = threading.Event()
        self.outcome: Any = None
        self.lead = False


class GroupCommit(Generic[Call]):
    """Send calls in batches through ``send(calls) -> outcomes``.

    ``send`` returns one outcome per call, in order: a result, or the exception that call
    raised (it is raised in that caller's thread). If ``send`` itself raises, every call of
    the batch raises it. ``max_batch`` bounds a batch; the rest waits for the next one.
    """

    def __init__(self, send: Callable[[Sequence[Call]], Sequence[Any]], *,
                 max_batch: int = 64) -> None:
        self._send = send
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Slot[Call]] = []
        self._busy = False
        self.batches = 0
        """Batches sent (for benchmarks: calls / batches is the calls per round trip)."""

    def __call__(self, call: Call) -> Any:
        slot = _Slot(call)
        with self._lock:
            self._queue.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.event.wait()
            if not slot.lead:
                return self._outcome(slot)
        self._lead()
        return self._outcome(slot)

    def _lead(self) -> None:
        with self._lock:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
        self.batches += 1
        try:
            outcomes: Sequence[Any] = self._send([slot.call for slot in batch])
            if len(outcomes) != len(batch):  # pragma: no cover - a broken send
                raise RuntimeError(f"send returned {len(outcomes)} outcomes for {len(batch)}")
        except BaseException as exc:  # every caller of the batch sees the failure
            outcomes = [exc] * len(batch)
        for slot, outcome in zip(batch, outcomes, strict=True):
            slot.outcome = outcome
        with self._lock:
            if self._queue:
                successor: _Slot[Call] | None = self._queue[0]
                successor.lead = True  # type: ignore[union-attr]
            else:
                successor = None
                self._busy = False
        for slot in batch:
            slot.event.set()
        if successor is not None:
            successor.event.set()

    @staticmethod
    def _outcome(slot: _Slot[Any]) -> Any:
        outcome = slot.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class AsyncGroupCommit(Generic[Call]):
    """:class:`GroupCommit` for the tasks of one event loop: ``await batch(call)``.

    A call that finds nobody sending sends at once, alone; calls that arrive while a batch is
    on the wire wait for the next one, which a task of the batcher's own sends as soon as the
    current one is answered (so no caller waits for another's batch after its own).
    """

    def __init__(self, send: Callable[[Sequence[Call]], Awaitable[Sequence[Any]]], *,
                 max_batch: int = 64) -> None:
        self._send = send
        self._max_batch = max_batch
        self._queue: list[tuple[Call, asyncio.Future[Any]]] = []
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0
        """Batches sent."""

    async def __call__(self, call: Call) -> Any:
        if not self._busy:
            self._busy = True
            try:
                outcome = (await self._run([call]))[0]
            finally:
                self._release()
        else:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((call, future))
            outcome = await future
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _run(self, calls: Sequence[Call]) -> Sequence[Any]:
        self.batches += 1
        try:
            outcomes = await self._send(calls)
        except Exception as exc:  # every caller of the batch sees the failure
            return [exc] * len(calls)
        return outcomes

    def _release(self) -> None:
        """The batch on the wire is answered: the queued calls go next, from a task."""
        if self._queue:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                outcomes = await self._run([call for call, _ in batch])
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._busy = False
            for _, future in self._queue:  # cancelled mid-way: nobody is left hanging
                if not future.done():
                    future.set_exception(RuntimeError("the batch was cancelled"))
            self._queue.clear()
