"""A call that two adapters see is counted once.

A LangChain ``ChatOpenAI`` built on a ``track_openai`` client, with the LangChain handler
registered too, passes one provider call through both adapters. The outer adapter (the
LangChain handler) opens a :class:`RunMark` in the current context for each model run it
starts, holding the run's reservation; the inner one (the OpenAI transport) claims the mark of
the run an HTTP request belongs to and records the request itself (it sees the exact HTTP
usage), so the outer adapter records nothing for a claimed run.

The rules, which keep every provider call counted exactly once:

* A context holds the marks of the runs started in it (:func:`open_marks`), oldest first; a
  ``generate()`` over several prompts opens one mark per prompt, in one :class:`RunGroup`.
* A request can only claim a run that asked for the same model with the same kind of API (a
  chat run: chat completions or responses; a plain-LLM run: completions). So a run of another
  model (a fake, Anthropic ...), or of an OpenAI model on an untracked client, is never taken
  over by a tracked call made inside it (an embeddings call from its streaming loop, say): both
  keep their own records.
* A first attempt claims the oldest matching unclaimed mark (a completions request that
  carries ``k`` prompts claims ``k``) and takes the first one's reservation. A retry (the SDK's
  ``x-stainless-retry-count`` > 0) belongs to the latest matching claimed mark and reserves for
  itself, so retries cannot pass a limit. A first attempt that finds no match is on its own.
* A mark is closed when its run ends, or when the outer adapter learns that LangChain gave up on
  it; closed marks, and marks older than their reservation's expiry, are ignored.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from .storage.base import Reservation

__all__ = [
    "Claim", "RunGroup", "RunMark", "claim", "current_run", "group_for", "open_marks", "push_mark",
]

#: Marks are ignored this long after they were opened when no reservation says otherwise.
DEFAULT_MARK_TTL = 600.0
#: Marks one context holds at most; past it, closed marks are dropped, then the oldest.
MAX_MARKS = 1024


@dataclass(slots=True, eq=False)
class RunGroup:
    """The runs one ``generate()`` starts together (one per prompt)."""

    parent: object = None
    size: int = 1
    members: int = 0

    def full(self) -> bool:
        return self.members >= self.size


@dataclass(slots=True, eq=False)
class RunMark:
    """One outer run, as the inner adapter sees it."""

    reservation: Reservation | None = None
    workspace_id: str | None = None
    """The outer adapter's workspace: the inner one records the call there."""
    scopes: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    """The model the run asked for; only a request for this model can claim the run."""
    chat: bool = True
    """A chat model run (else a plain-LLM run, whose requests are legacy completions)."""
    group: RunGroup = field(default_factory=RunGroup)
    ttl: float = DEFAULT_MARK_TTL
    """Seconds after which the mark is ignored (the run's reservation has expired by then)."""
    opened: float = field(default_factory=time.monotonic)
    open: bool = True
    """False once the outer run has ended (or was abandoned)."""
    claimed: bool = False
    """True once an HTTP request has claimed the run: the inner adapter records it."""
    recorded: bool = False
    """True once the inner adapter has recorded an attempt of the run (an HTTP answer came,
    even one cut short): the outer adapter must then record nothing for it."""

    def live(self, now: float) -> bool:
        """Open, and not older than its ttl."""
        return self.open and now - self.opened < self.ttl

    def close(self) -> Reservation | None:
        """End the mark; returns the reservation if no inner adapter took it."""
        self.open = False
        reservation, self.reservation = self.reservation, None
        return reservation


@dataclass(slots=True)
class Claim:
    """What one HTTP attempt learned from the marks: the run it belongs to (or None), and the
    reservation it took over (None: it must reserve for itself)."""

    mark: RunMark | None = None
    reservation: Reservation | None = None


current_run: ContextVar[tuple[RunMark, ...]] = ContextVar("quota_hooks_runs", default=())
_claims = threading.Lock()


def open_marks() -> list[RunMark]:
    """The live marks of the current context, oldest first."""
    now = time.monotonic()
    return [mark for mark in current_run.get() if mark.live(now)]


def group_for(parent: object, size: int) -> RunGroup:
    """The group of a run starting now: the current one when this run is the next prompt of
    the same ``generate()``, a new one otherwise."""
    marks = current_run.get()
    last = marks[-1] if marks else None
    if (
        size > 1
        and last is not None
        and last.open
        and last.group.parent == parent
        and last.group.size == size
        and not last.group.full()
    ):
        return last.group
    return RunGroup(parent, size)


def push_mark(mark: RunMark) -> None:
    """Open ``mark`` in the current context.

    The context's marks are a tuple, copied on push, so that tasks started from this context
    share the marks opened before them but never see each other's. Marks that are no longer
    live are dropped whenever the tuple is at its bound (amortized: at most every
    ``MAX_MARKS // 2`` pushes).
    """
    mark.group.members += 1
    marks = current_run.get()
    if len(marks) >= MAX_MARKS:
        now = time.monotonic()
        marks = tuple(m for m in marks if m.live(now))[-(MAX_MARKS // 2):]
    current_run.set((*marks, mark))


_CHAT_METHODS = frozenset({"chat.completions", "responses"})


def claim(model: str | None, method: str, attempt: int = 0, prompts: int = 1) -> Claim:
    """The marks one HTTP attempt of the OpenAI transport claims (see the module doc)."""
    if model is None:
        return Claim()
    chat = method in _CHAT_METHODS
    if not chat and method != "completions":
        return Claim()
    marks = [mark for mark in open_marks() if mark.model == model and mark.chat == chat]
    if not marks:
        return Claim()
    with _claims:
        if attempt > 0:
            claimed = [mark for mark in marks if mark.claimed]
            return Claim(claimed[-1]) if claimed else Claim()
        free = [mark for mark in marks if not mark.claimed][: max(1, prompts)]
        if not free:
            return Claim()
        for mark in free:
            mark.claimed = True
        first = free[0]
        reservation, first.reservation = first.reservation, None
        return Claim(first, reservation)
