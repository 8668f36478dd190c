"""Live events: which workspaces changed, and the alerts sent, for the WebSocket and the CLI.

The hot path (``QuotaManager.record``) calls :meth:`Events.changed`, which costs one attribute
read when nobody listens. A listener is a :class:`Subscription` bound to an asyncio loop: a
change marks its workspace dirty and wakes the listener once, however many records arrive
before it reads them, so a slow listener never slows a call and never queues without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Any

__all__ = ["Events", "Subscription"]


class Subscription:
    """Changes and alerts for one listener, coalesced per workspace.

    ``workspaces``: the workspaces it follows, or None for all of them. Call :meth:`close`
    when done.
    """

    def __init__(
        self, hub: Events, loop: asyncio.AbstractEventLoop, workspaces: frozenset[str] | None,
        alert_capacity: int = 100,
    ) -> None:
        self._hub = hub
        self._loop = loop
        self.workspaces = workspaces
        self._dirty: set[str] = set()
        self._alerts: deque[Any] = deque(maxlen=alert_capacity)
        self._wake = asyncio.Event()
        self._lock = threading.Lock()
        self._scheduled = False

    def wants(self, workspace_id: str) -> bool:
        """True when this subscription follows ``workspace_id``."""
        return self.workspaces is None or workspace_id in self.workspaces

    def _mark(self, workspace_id: str | None, alert: Any = None) -> None:
        with self._lock:
            if workspace_id is not None:
                self._dirty.add(workspace_id)
            if alert is not None:
                self._alerts.append(alert)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the listener's loop has closed
            self._hub.unsubscribe(self)

    async def wait(self, timeout: float | None = None) -> tuple[set[str], list[Any]]:  # noqa: ASYNC109
        """The workspaces changed and the alerts sent since the last call; waits for at
        least one (up to ``timeout`` seconds: then both may be empty)."""
        if timeout is None:
            await self._wake.wait()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        with self._lock:
            self._wake.clear()
            self._scheduled = False
            dirty, self._dirty = self._dirty, set()
            alerts = list(self._alerts)
            self._alerts.clear()
        return dirty, alerts

    def close(self) -> None:
        """Stop listening."""
        self._hub.unsubscribe(self)


class Events:
    """The manager's event hub (``manager.events``)."""

    def __init__(self) -> None:
        self._subscriptions: tuple[Subscription, ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, workspaces: frozenset[str] | None = None) -> Subscription:
        """A subscription on the running event loop, for ``workspaces`` (None: all)."""
        sub = Subscription(self, asyncio.get_running_loop(), workspaces)
        with self._lock:
            self._subscriptions = (*self._subscriptions, sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove ``sub`` (no error if it is gone already)."""
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not sub)

    @property
    def listeners(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    def changed(self, workspace_id: str) -> None:
        """Note new usage in ``workspace_id``. Thread-safe, never blocks."""
        subs = self._subscriptions
        if not subs:
            return
        for sub in subs:
            if sub.wants(workspace_id):
                sub._mark(workspace_id)

    def alert(self, alert: Any) -> None:
        """Pass a sent alert (with a ``workspace_id``) to the listeners of its workspace; an
        alert about every workspace (``"*"``: tracking failed outside any one) to all."""
        everyone = alert.workspace_id == "*"
        for sub in self._subscriptions:
            if everyone or sub.wants(alert.workspace_id):
                sub._mark(None, alert)
