"""Public protocols and aliases (like structlog's ``typing``): what you pass to quota-hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from .alerts.model import SinkLike

__all__ = ["AsyncSleeper", "Clock", "Drainer", "SinkLike", "Sleeper", "TokenEstimator"]

Clock = Callable[[], float]
"""Returns epoch seconds (``time.time``; ``quota_hooks.testing.ManualClock`` in tests)."""
Sleeper = Callable[[float], None]
"""Waits a number of seconds (``time.sleep``)."""
AsyncSleeper = Callable[[float], Awaitable[None]]
"""Waits a number of seconds without blocking the event loop (``anyio.sleep``)."""
TokenEstimator = Callable[[int], int]
"""Prompt tokens of a prompt of this many bytes (or characters), for reservations."""


class Drainer(Protocol):
    """Background work that :meth:`QuotaManager.drain <quota_hooks.QuotaManager.drain>` waits
    for (LiteLLM's logging threads, for one). Register with ``manager.add_drainer``."""

    def drain(self, timeout: float) -> bool:
        """Block until idle; False after ``timeout`` seconds."""
        ...

    async def adrain(self, timeout: float) -> bool:  # noqa: ASYNC109 - mirrors drain()
        """Wait until idle without blocking the event loop; False after ``timeout`` seconds."""
        ...
