"""The alert model and the sink protocol."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import Enum
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigurationError

__all__ = ["Alert", "AlertKind", "AlertSink", "CallbackSink", "SinkLike", "as_sink"]


class AlertKind(str, Enum):  # noqa: UP042 - str() stays "AlertKind.WARNING"
    """What an alert is about."""

    WARNING = "warning"
    """A limit reached its warning threshold (80 % by default)."""
    CRITICAL = "critical"
    """A limit reached its critical threshold (95 % by default)."""
    RATE_LIMITED = "rate_limited"
    """The provider answered 429."""
    QUOTA_EXCEEDED = "quota_exceeded"
    """The monthly budget is used up."""
    DEGRADED = "degraded"
    """Tracking itself failed (the calls went on)."""
    RECOVERED = "recovered"
    """A metric that had alerted is back below its lowest threshold."""
    THRESHOLD = "threshold"
    """A limit reached one of the policy's ``thresholds`` below its warning percentage."""
    POLICY_CHANGED = "policy_changed"
    """A stored policy was set or deleted (``quota-hooks policy``, the REST admin API)."""
    USAGE_RESET = "usage_reset"
    """A scope's usage was reset by an admin."""
    PROJECTED = "projected"
    """The budget is projected to run out before its period ends (at the run rate)."""


class Alert(BaseModel):
    """One alert. It carries numbers and names only: never a prompt, a completion or a key.

    ``current``/``limit`` are in the metric's unit (requests, tokens, or USD for
    ``monthly_budget_usd``); ``percentage`` is ``current`` as a share of ``limit``.
    ``dedupe_key`` names the crossing: the same crossing seen by several processes has the
    same key, and only the process that claims it in the store sends the alert.
    ``threshold`` is the percentage crossed (threshold alerts only).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AlertKind
    workspace_id: str
    scope: str
    metric: str | None = None
    current: float | None = None
    limit: float | None = None
    percentage: float | None = None
    threshold: float | None = None
    message: str
    at: datetime
    dedupe_key: str


@runtime_checkable
class AlertSink(Protocol):
    """Where alerts go. Implement one async method; quota-hooks calls it off the hot path,
    with a timeout, and a sink that raises or hangs never affects the others or any call."""

    async def send(self, alert: Alert) -> None:
        """Deliver one alert."""
        ...


SinkLike = AlertSink | Callable[[Alert], Awaitable[None] | None]
"""An :class:`AlertSink`, or a plain sync or async callable that takes an :class:`Alert`."""


_T = TypeVar("_T")


class OneThread:
    """Runs blocking calls in a worker thread, one at a time.

    A call that times out is abandoned in its thread (a thread cannot be stopped); the next
    call waits for it to finish instead of starting another thread, so a sink that hangs
    holds one thread, however many alerts time out behind it.
    """

    def __init__(self) -> None:
        self._running: threading.Event | None = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in a worker thread, after the previous call has finished."""
        pause = 0.001
        while self._running is not None and not self._running.is_set():
            await anyio.sleep(pause)  # the caller's timeout cancels this wait
            pause = min(pause * 2, 0.05)
        done = self._running = threading.Event()
        gate = threading.Lock()
        started = abandoned = False

        def call() -> Any:
            nonlocal started
            with gate:
                if abandoned:  # cancelled before the thread began: nothing to run
                    return None
                started = True
            try:
                return fn(*args)
            finally:
                done.set()

        try:
            result: _T = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        finally:
            with gate:
                if not started:  # cancelled before the thread began: free the next caller
                    abandoned = True
                    done.set()
        return result


class CallbackSink:
    """Any callable as a sink: ``CallbackSink(print)``, ``CallbackSink(my_async_fn)``.

    A sync callable runs in a worker thread, so a slow one never holds up other sinks; one
    thread at a time, so a callable that hangs holds one thread, not one per alert (later
    alerts wait for it and time out).
    """

    def __init__(self, callback: Callable[[Alert], Any]) -> None:
        if not callable(callback):
            raise ConfigurationError(
                f"CallbackSink needs a callable, got {type(callback).__name__}"
            )
        self.callback = callback
        self._thread = OneThread()
        self._is_async = inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)  # noqa: B004 - async callable objects
        )

    def __repr__(self) -> str:
        return f"CallbackSink({self.callback!r})"

    async def send(self, alert: Alert) -> None:
        """Call the callback with ``alert`` (awaiting it if it is async)."""
        if self._is_async:
            await self.callback(alert)
            return
        result = await self._thread.run(self.callback, alert)
        if inspect.isawaitable(result):
            await result


def as_sink(sink: SinkLike) -> AlertSink:
    """``sink`` as an :class:`AlertSink`: sinks pass through, callables are wrapped."""
    send = getattr(sink, "send", None)
    if send is not None and inspect.iscoroutinefunction(send):
        return sink  # type: ignore[return-value]
    if callable(sink):
        return CallbackSink(sink)
    raise ConfigurationError(
        f"an alert sink needs an async send(alert) method or must be callable, "
        f"got {type(sink).__name__}"
    )
