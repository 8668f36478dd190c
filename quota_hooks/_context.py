"""A call that two adapters see is counted once.

A LangChain ``ChatOpenAI`` built on a ``track_openai`` client, with the LangChain handler
registered too, passes one provider call through both adapters. The outer adapter (the
LangChain handler) opens a :class:`RunMark` in the current context before the model call; the
inner one (the OpenAI transport) finds it, uses the outer reservation instead of taking a
second one, records the call itself (it sees the exact HTTP usage) and marks the run
``tracked``, so the outer adapter records nothing for it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from .storage.base import Reservation

__all__ = ["RunMark", "current_run"]


@dataclass(slots=True)
class RunMark:
    """One outer run, as the inner adapter sees it."""

    reservation: Reservation | None = None
    workspace_id: str | None = None
    """The outer adapter's workspace: the inner one records the call there."""
    scopes: dict[str, str] = field(default_factory=dict)
    tracked: bool = False
    """Set by the inner adapter once it has recorded (and settled) the call."""

    def take_reservation(self) -> Reservation | None:
        """The outer reservation, handed out once (retries reserve anew)."""
        reservation, self.reservation = self.reservation, None
        return reservation


current_run: ContextVar[RunMark | None] = ContextVar("quota_hooks_run", default=None)
