"""A call that two adapters see is counted once.

A LangChain ``ChatOpenAI`` built on a ``track_openai`` client, with the LangChain handler
registered too, passes one provider call through both adapters. The outer adapter (the
LangChain handler) opens a :class:`RunMark` in the current context for each model run it
starts, holding the run's reservation; the inner one (the OpenAI transport) claims a mark for
each HTTP attempt it sends, records the attempt itself (it sees the exact HTTP usage) and marks
the run ``tracked``, so the outer adapter records nothing for it.

The rules, which keep every provider call counted exactly once:

* A context holds the marks of the runs started in it (:func:`open_marks`); one
  ``generate()`` over several prompts opens one mark per prompt.
* An HTTP attempt claims the oldest unclaimed open mark and uses its reservation
  (:func:`claim`). An attempt that finds every open mark claimed (a retry, or a second request
  inside one run) reserves for itself, enforced like any call, and is attributed to the run it
  follows.
* A mark is closed when its run ends, or when the outer adapter learns that the run was
  abandoned; closed marks, and marks older than their reservation's expiry, are ignored, so a
  run that never ends cannot switch off enforcement for later calls in the same context.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from .storage.base import Reservation

__all__ = ["RunMark", "claim", "current_run", "open_marks", "push_mark"]

#: Marks are ignored this long after they were opened when no reservation says otherwise.
DEFAULT_MARK_TTL = 600.0
#: Marks one context holds at most; past it, closed marks are dropped, then the oldest.
MAX_MARKS = 1024


@dataclass(slots=True, eq=False)
class RunMark:
    """One outer run, as the inner adapter sees it."""

    reservation: Reservation | None = None
    workspace_id: str | None = None
    """The outer adapter's workspace: the inner one records the call there."""
    scopes: dict[str, str] = field(default_factory=dict)
    ttl: float = DEFAULT_MARK_TTL
    """Seconds after which the mark is ignored (the run's reservation has expired by then)."""
    opened: float = field(default_factory=time.monotonic)
    open: bool = True
    """False once the outer run has ended (or was abandoned)."""
    claimed: bool = False
    """True once an HTTP attempt has claimed the run."""
    tracked: bool = False
    """Set by the inner adapter once it has recorded (and settled) a call of the run."""

    def live(self, now: float) -> bool:
        """Open, and not older than its ttl."""
        return self.open and now - self.opened < self.ttl

    def close(self) -> Reservation | None:
        """End the mark; returns the reservation if no inner adapter took it."""
        self.open = False
        reservation, self.reservation = self.reservation, None
        return reservation


current_run: ContextVar[tuple[RunMark, ...]] = ContextVar("quota_hooks_runs", default=())
_claims = threading.Lock()


def open_marks() -> list[RunMark]:
    """The live marks of the current context, oldest first."""
    now = time.monotonic()
    return [mark for mark in current_run.get() if mark.live(now)]


def push_mark(mark: RunMark) -> None:
    """Open ``mark`` in the current context.

    The context's marks are a tuple, copied on push, so that tasks started from this context
    share the marks opened before them but never see each other's. Marks that are no longer
    live are dropped whenever the tuple is at its bound (amortized: at most every
    ``MAX_MARKS // 2`` pushes).
    """
    marks = current_run.get()
    if len(marks) >= MAX_MARKS:
        now = time.monotonic()
        marks = tuple(m for m in marks if m.live(now))[-(MAX_MARKS // 2):]
    current_run.set((*marks, mark))


def claim() -> tuple[RunMark | None, Reservation | None]:
    """For one HTTP attempt: the run it belongs to and the reservation it may use.

    ``(None, None)``: no outer run, the attempt is on its own. ``(mark, reservation)``: the
    oldest unclaimed run, whose reservation the attempt takes. ``(mark, None)``: every run is
    claimed (a retry, or a second request in one run): the attempt belongs to the latest
    claimed run and must reserve for itself.
    """
    marks = open_marks()
    if not marks:
        return None, None
    with _claims:
        for mark in marks:
            if not mark.claimed:
                mark.claimed = True
                reservation, mark.reservation = mark.reservation, None
                return mark, reservation
    return marks[-1], None
