"""Group commit: concurrent calls from one process share a round trip, a lone call adds none.

A caller that finds nobody sending becomes the leader: it sends what is queued (its own call
and any that arrived meanwhile) as one batch, hands each caller its result, and passes the
lead to the first caller still waiting, who sends the next batch. While one batch is on the
wire the next one fills, so under load the calls per round trip grow with the number in
flight, and a lone call is sent at once, on its own thread, as if there were no batching
(the pattern of a database's group commit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit"]

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
