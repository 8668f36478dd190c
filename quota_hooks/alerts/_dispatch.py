"""Alert delivery off the hot path: one background thread with an event loop, and a bounded
outbox per sink.

The thread, ``quota-hooks-alerts``, starts on the first :meth:`Dispatcher.kick`. Each wake it
runs the engine's evaluation (``on_wake``), at most once per :data:`MIN_INTERVAL` (kicks in
between coalesce into one wake, so a busy hot path costs one cross-thread wake-up per
interval, not one per call), then each sink's delivery task sends what its outbox holds. A
full outbox drops its oldest alert (counted in ``dropped``); each send has a timeout; a sink
that raises or hangs affects no other sink and no call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from .._exit import close_at_exit
from .model import Alert, AlertSink, SinkLike, as_sink

__all__ = ["Dispatcher"]

logger = logging.getLogger("quota_hooks.alerts")

#: Seconds between two evaluations at the most: an alert is at most this late.
MIN_INTERVAL = 0.02


@dataclass(slots=True)
class _Outbox:
    sink: AlertSink
    queue: deque[Alert]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False
    started: bool = False
    failures: int = 0


class Dispatcher:
    """Runs ``on_wake`` on a background event loop whenever kicked, and delivers alerts.

    Args:
        on_wake: the engine's evaluation, awaited once per wake (kicks coalesce).
        pending: True while the engine holds work not yet evaluated.
        queue_size: alerts held per sink before the oldest is dropped.
        sink_timeout: seconds one ``send`` may take (retries included).
    """

    def __init__(
        self,
        on_wake: Callable[[], Awaitable[None]],
        pending: Callable[[], bool],
        *,
        queue_size: int,
        sink_timeout: float,
    ) -> None:
        self._on_wake = on_wake
        self._pending = pending
        self.queue_size = queue_size
        self.sink_timeout = sink_timeout
        self._outboxes: list[_Outbox] = []
        self._lock = threading.Lock()
        self._kicked = False
        self._running = False
        self.closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._hurry_flag = False
        self._hurry = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.lost = 0

    @property
    def sinks(self) -> list[AlertSink]:
        """The sinks, in the order they were added."""
        return [outbox.sink for outbox in self._outboxes]

    def after_fork_in_child(self) -> None:
        """A child process after ``fork()`` has no alert thread: the next kick starts its
        own; the alerts queued in the parent are the parent's to send."""
        self._lock = threading.Lock()
        self._kicked = self._running = self._hurry_flag = False
        self._loop, self._wake, self._thread = None, None, None
        self._ready = threading.Event()
        self._hurry = asyncio.Event()
        self._tasks = set()
        for outbox in self._outboxes:
            outbox.queue.clear()
            outbox.started = outbox.busy = False

    @property
    def has_sinks(self) -> bool:
        """True once a sink is added."""
        return bool(self._outboxes)

    def add_sink(self, sink: SinkLike) -> AlertSink:
        """Add a sink (an :class:`AlertSink` or a callable); returns it as an AlertSink."""
        resolved = as_sink(sink)
        outbox = _Outbox(resolved, deque(maxlen=self.queue_size))
        with self._lock:
            self._outboxes = [*self._outboxes, outbox]
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._start_delivery, outbox)
        return resolved

    def enqueue(self, alert: Alert) -> None:
        """Queue ``alert`` for every sink (on the dispatcher's loop)."""
        for outbox in self._outboxes:
            if len(outbox.queue) == outbox.queue.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
            outbox.queue.append(alert)
            outbox.wake.set()

    # ------------------------------------------------------------------ waking
    def kick(self) -> None:
        """Run ``on_wake`` soon. Cheap, thread-safe, never blocks (but the first kick
        starts the thread)."""
        if self._kicked or self.closing:
            return
        self._kicked = True
        if self._thread is None:
            self._start_thread()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped after close()
                loop.call_soon_threadsafe(wake.set)

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=asyncio.run, args=(self._main(),), name="quota-hooks-alerts", daemon=True
            )
            self._thread.start()
        close_at_exit(self, 1)  # a plain exit still sends what is queued
        self._ready.wait(10)

    # ------------------------------------------------------------------ waiting
    def idle(self) -> bool:
        """True when no wake is pending or running, the engine holds nothing, and every
        outbox is empty."""
        if self._kicked or self._running or self._pending():
            return False
        return all(not o.queue and not o.busy for o in self._outboxes)

    def _hurry_up(self) -> None:
        """Someone waits: evaluate without the gathering pause until idle again."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self._hurry_flag:
            self._hurry_flag = True
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._hurry.set)

    def _calm_down(self) -> None:
        if self._hurry_flag:
            self._hurry_flag = False
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._hurry.clear)

    def drain(self, timeout: float = 5.0) -> bool:
        """Block until :meth:`idle` (False on timeout)."""
        if self.idle():
            return True
        self._hurry_up()
        try:
            return self._wait_idle(timeout)
        finally:
            self._calm_down()

    def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = 0.0002
        while not self.idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        return True

    async def adrain(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - mirrors drain()
        """Async :meth:`drain`."""
        if self.idle():
            return True
        self._hurry_up()
        try:
            deadline = time.monotonic() + timeout
            pause = 0.0002
            while not self.idle():
                if time.monotonic() >= deadline:
                    return False
                await anyio.sleep(pause)
                pause = min(pause * 2, 0.01)
            return True
        finally:
            self._calm_down()

    @property
    def running(self) -> bool:
        """True once the thread has started, until :meth:`close`."""
        return self._thread is not None and not self.closing

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop the thread; alerts
        not delivered by then are logged as lost and counted in :attr:`lost`."""
        thread = self._thread
        if thread is None or self.closing:
            return
        self.drain(timeout)
        self.closing = True
        self._hurry_up()
        lost = sum(len(o.queue) + (1 if o.busy else 0) for o in self._outboxes)
        if lost:
            self.lost += lost
            logger.error("quota-hooks: %d alert(s) were not delivered within %gs and are lost "
                         "(sinks: %s)", lost, timeout,
                         ", ".join(repr(o.sink) for o in self._outboxes if o.queue or o.busy))
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)
        thread.join(timeout)
        self._kicked = False

    # ------------------------------------------------------------------ the thread
    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for outbox in self._outboxes:
            self._start_delivery(outbox)
        # anyio imports its backend on first use: done now, while the thread that started
        # this one waits, so that a fork() never copies that import half done.
        await anyio.lowlevel.checkpoint()
        self._ready.set()
        self._wake.set()  # a kick may have come before the loop existed
        try:
            while not self.closing:
                await self._wake.wait()
                self._wake.clear()
                self._running = True
                self._kicked = False
                try:
                    await self._on_wake()
                except Exception:  # never let the thread die
                    logger.exception("quota-hooks: evaluating alerts failed")
                finally:
                    self._running = False
                # Let the next kicks gather, unless someone waits (drain, close).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), MIN_INTERVAL)
        finally:
            for task in self._tasks:
                task.cancel()

    def _start_delivery(self, outbox: _Outbox) -> None:
        if outbox.started:
            return
        outbox.started = True
        outbox.wake = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._deliver(outbox))
        self._tasks.add(task)
        if outbox.queue:
            outbox.wake.set()

    async def _deliver(self, outbox: _Outbox) -> None:
        while True:
            await outbox.wake.wait()
            outbox.wake.clear()
            while outbox.queue:
                outbox.busy = True
                alert = outbox.queue.popleft()
                try:
                    with anyio.fail_after(self.sink_timeout):
                        await outbox.sink.send(alert)
                    self.sent += 1
                except Exception as exc:
                    self.failed += 1
                    outbox.failures += 1
                    logger.log(
                        logging.WARNING if outbox.failures == 1 else logging.DEBUG,
                        "quota-hooks: alert sink %r failed on %s: %r%s",
                        outbox.sink, alert.kind.value, exc,
                        " (further failures of this sink are counted in failed)"
                        if outbox.failures == 1 else "",
                    )
                finally:
                    outbox.busy = False
