"""Logic written once for sync and async callers: a *flow* is a generator that yields the
I/O steps it needs (a store call, a sleep, a manager call) and is sent their results, or
thrown their errors. :func:`run` carries the steps out with blocking calls, :func:`arun`
with awaited ones; only they differ (as httpx writes its auth flows once)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["Flow", "arun", "run"]

S = TypeVar("S")
R = TypeVar("R")
#: A flow yielding steps ``S`` and returning ``R``.
Flow = Generator[S, Any, R]


def run(flow: Flow[S, R], do: Callable[[S], Any]) -> R:
    """Run ``flow`` to its end: each step it yields is done by ``do``, whose result (or
    error, an ``Exception``) goes back into the flow."""
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            step = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as done:
            returned: R = done.value
            return returned
        try:
            result, error = do(step), None
        except Exception as exc:
            result, error = None, exc


async def arun(flow: Flow[S, R], do: Callable[[S], Awaitable[Any]]) -> R:
    """Async :func:`run`: each step is awaited."""
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            step = flow.send(result) if error is None else flow.throw(error)
        except StopIteration as done:
            returned: R = done.value
            return returned
        try:
            result, error = await do(step), None
        except Exception as exc:
            result, error = None, exc
