"""Public protocols and aliases (like structlog's ``typing``): what you pass to quota-hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, Protocol

from .alerts.model import SinkLike

if TYPE_CHECKING:
    from .storage.base import Reservation, UsageEntry
    from .usage import Estimate

__all__ = ["AsyncSleeper", "Clock", "Decision", "Drainer", "Observer", "SinkLike", "Sleeper",
           "TokenEstimator"]

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


Decision = Literal["admitted", "waited", "refused"]
"""What ``acquire`` decided: the call may go (at once, or after waiting), or not."""


class Observer(Protocol):
    """Told of every call a manager records and every decision of its ``acquire``
    (:mod:`quota_hooks.otel` is one). Register with ``manager.add_observer``.

    Both methods run on the caller's path, after the store has answered: keep them cheap
    (queue the work). What they raise is caught and counted as a tracking failure, never
    raised into the caller's call.
    """

    def recorded(self, entry: UsageEntry, reservation: Reservation | None) -> None:
        """A call was counted: ``entry`` is its record, priced (``entry.cost``, ``None`` for
        no price), and what it added; ``reservation`` the one it settled, if any."""
        ...

    def decided(self, workspace_id: str, estimate: Estimate, decision: Decision,
                limit: str | None, reservation: Reservation | None) -> None:
        """``acquire`` decided: ``limit`` is the metric that refused (``rpm`` ...,
        ``monthly_budget``; None for a store that failed), ``reservation`` what was held."""
        ...
