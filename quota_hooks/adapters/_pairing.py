"""Pairing: a provider call that two adapters see is counted once.

A LangChain ``ChatOpenAI`` built on a ``track_openai`` client, with the LangChain handler
registered too, passes one provider call through both adapters. The *outer* adapter (the
LangChain handler) reserves for each model run it starts and opens a :class:`RunMark` for
it in the current context (:func:`push_mark`). The *inner* adapter (the OpenAI transport)
asks, for each HTTP attempt, which run the attempt belongs to (:func:`claim`). An attempt
that claims a run records the call itself, at the exact HTTP usage, in the run's workspace
and scopes; the outer adapter then records nothing for that run.

Which attempt takes an outer run's reservation
==============================================

Only a *live* mark can be claimed: open (its run has not ended) and younger than its
``ttl`` (the life of its reservation). Among the live marks the attempt's context holds,
oldest first:

* **Same model, same kind of API.** An attempt only claims a mark whose run asked for the
  same model with the same kind of API: a chat run (:attr:`RunMark.chat`) is claimed by
  ``chat.completions`` and ``responses`` requests, a plain-LLM run by ``completions``
  requests. Any other method (embeddings, images ...), a request without a model, a run of
  another provider (a fake, Anthropic: another model name) or an OpenAI run on an untracked
  client is never paired: both sides keep their own records.
* **First attempts.** An attempt with ``x-stainless-retry-count`` 0 claims the oldest
  matching mark that no attempt has claimed, and takes its reservation. So in nested runs
  (a model run started inside another one's streaming loop) each run's request claims its
  own run: the enclosing run was claimed by its own request already.
* **Batches.** A ``generate()`` over ``N`` prompts opens ``N`` marks, one :class:`RunGroup`
  (:func:`group_for`); each prompt's request claims one of them. A legacy completions
  request that carries ``k`` prompts claims ``k`` marks at once and takes the first one's
  reservation; the others' reservations go back when their runs end.
* **Retries.** An attempt with ``x-stainless-retry-count`` > 0 belongs to the latest matching
  mark already claimed (the run whose first attempt failed) but takes no reservation: it
  reserves for itself, so retries can never pass a limit. A retry with no claimed match is
  on its own.
* **No match, no reservation.** A first attempt with no unclaimed match is on its own: it
  reserves and records like any tracked call. A run that holds no reservation (nothing is
  enforced, or the store failed open) is still claimed, so the call is still counted once,
  but the attempt reserves for itself (:attr:`Claim.takes_reservation` is False).
* **Streams closed early.** Once claimed, the attempt keeps its mark: when the caller stops
  reading a stream, the run ends first, the HTTP attempt later records what it saw (at its
  estimate when the usage never came) and sets :attr:`RunMark.recorded`; the outer run
  records nothing. A closed mark is never claimed again.

When a run's mark is cleared
============================

:meth:`RunMark.close` ends a mark when its run ends (``on_llm_end``/``on_llm_error``), when
the outer adapter learns LangChain gave up on the run (the other prompts of a refused
``generate()``), or when it forgets a run that never ended. A closed mark leaves *every*
context holding it at once, whichever context its run ends in: LangChain ends an async run
in a child task of the context that started it. So after a run, the context that started it
holds none of its marks (:func:`held_marks` is empty), and no claim scans it again.

Contexts
========

The marks of a context are a persistent stack, shared by reference: a context copied from
another (an asyncio task, a LangChain child context, ``copy_context().run`` in a thread
pool) sees the marks opened before the copy, and marks it opens are seen by it alone (and
its own copies), never by its parent or its siblings. A new thread starts with no marks.

The stack is a linked list of links, one per mark, newest first, that contexts share. Closing
a mark empties its link, which every walk splices out (a context's top link, the one the
context itself points to, goes at its next push, or at once when the run ends in that
context). A stack holds at most :data:`MAX_MARKS` links: past that, it is cut to its newest
``MAX_MARKS // 2`` live marks (runs that never end cannot make every claim slower).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..storage.base import Reservation

__all__ = [
    "CHAT_METHODS",
    "DEFAULT_MARK_TTL",
    "MAX_MARKS",
    "Claim",
    "RunGroup",
    "RunMark",
    "claim",
    "group_for",
    "held_marks",
    "no_marks",
    "open_marks",
    "push_mark",
]

#: Seconds a mark without a reservation stays claimable (``QuotaPolicy``'s default
#: ``reservation_ttl``); a mark with one stays claimable as long as its reservation lives.
DEFAULT_MARK_TTL = 3600.0
#: Links one context holds at most; past it, its live marks are rebuilt, newest half kept.
MAX_MARKS = 1024
#: The API methods of a chat model run's requests; a plain-LLM run's are ``completions``.
CHAT_METHODS = frozenset({"chat.completions", "responses"})
_COMPLETIONS = "completions"


@dataclass(slots=True, eq=False)
class RunGroup:
    """The runs one ``generate()`` starts together, one per prompt.

    Attributes:
        parent: the parent run id LangChain gave the runs (None at the top).
        size: how many prompts the ``generate()`` has (its ``batch_size``).
        members: how many of its runs have opened a mark so far.
    """

    parent: object = None
    size: int = 1
    members: int = 0

    def full(self) -> bool:
        """True once every prompt of the ``generate()`` has opened its mark."""
        return self.members >= self.size


@dataclass(slots=True, eq=False)
class RunMark:
    """One outer run, as the inner adapter sees it.

    Open it with :func:`push_mark` when the run starts and :meth:`close` it when the run
    ends, whatever way it ends.
    """

    reservation: Reservation | None = None
    """The run's reservation, until an attempt takes it (:func:`claim`) or the run ends."""
    workspace_id: str | None = None
    """The outer adapter's workspace: the inner one records the call there."""
    scopes: dict[str, str] = field(default_factory=dict)
    """The outer adapter's scopes: the inner one records the call with them."""
    model: str | None = None
    """The model the run asked for; only a request for this model can claim the run."""
    chat: bool = True
    """A chat model run (else a plain-LLM run, whose requests are legacy completions)."""
    group: RunGroup = field(default_factory=RunGroup)
    """The ``generate()`` the run belongs to."""
    ttl: float | None = None
    """Seconds after which the mark is ignored; by default its reservation's life
    (``expires_at - at``), else :data:`DEFAULT_MARK_TTL`."""
    opened: float = field(default_factory=time.monotonic)
    """When the mark was made (``time.monotonic()``)."""
    open: bool = True
    """False once the outer run has ended (or was abandoned)."""
    claimed: bool = False
    """True once an HTTP attempt has claimed the run: the inner adapter records it."""
    recorded: bool = False
    """True once the inner adapter has recorded an attempt of the run (an HTTP answer came,
    even one cut short): the outer adapter must then record nothing for it."""
    _link: _Link | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ttl is None:
            reservation = self.reservation
            self.ttl = (reservation.expires_at - reservation.at if reservation is not None
                        else DEFAULT_MARK_TTL)

    def live(self, now: float | None = None) -> bool:
        """Open, and not older than its ttl (``now``: ``time.monotonic()``)."""
        if not self.open:
            return False
        elapsed = (time.monotonic() if now is None else now) - self.opened
        return elapsed < (DEFAULT_MARK_TTL if self.ttl is None else self.ttl)

    def close(self) -> Reservation | None:
        """End the mark: it is never claimed again, and it leaves every context that holds
        it. Returns the reservation if no attempt took it (the caller gives it back or
        records against it), else None. Closing twice is harmless."""
        with _claims:
            self.open = False
            reservation, self.reservation = self.reservation, None
            link, self._link = self._link, None
        now = time.monotonic()
        if link is not None:
            link.mark = None  # an empty link now, in every context that holds it
            link.below = _first_live(link.below, now)
        top = _top.get()
        if top is not None and not _is_live(top, now):
            _top.set(_first_live(top, now))
        return reservation


@dataclass(slots=True)
class Claim:
    """What one HTTP attempt learned from the marks (see the module doc).

    Attributes:
        mark: the outer run the attempt belongs to (None: on its own). The attempt records
            the call in the mark's workspace and scopes and sets its ``recorded``.
        reservation: the run's reservation, which the attempt took over and settles; None
            when it must reserve for itself (a retry, a run without a reservation).
    """

    mark: RunMark | None = None
    reservation: Reservation | None = None

    @property
    def takes_reservation(self) -> bool:
        """True when the attempt settles the outer run's reservation instead of its own."""
        return self.reservation is not None


@dataclass(slots=True, eq=False)
class _Link:
    """One mark on a context's stack; ``mark`` is None once the run has ended."""

    mark: RunMark | None
    below: _Link | None
    depth: int


_top: ContextVar[_Link | None] = ContextVar("quota_hooks_runs", default=None)
_claims = threading.Lock()


def _is_live(link: _Link, now: float) -> bool:
    mark = link.mark
    return mark is not None and mark.live(now)


def _first_live(link: _Link | None, now: float) -> _Link | None:
    """``link``, or the first link below it, whose mark is live (None when none is)."""
    while link is not None and not _is_live(link, now):
        link = link.below
    return link


def _live_links(link: _Link | None, now: float, limit: int | None = None) -> list[_Link]:
    """The live links of the stack from ``link`` down, newest first. Links of runs that
    ended (or whose marks expired) are spliced out on the way: they are dead in every
    context, so this is right for all that share the links. With ``limit``, the stack is cut
    below the ``limit``-th live link (older marks are dropped)."""
    found: list[_Link] = []
    link = _first_live(link, now)
    while link is not None:
        if found and found[-1].below is not link:
            found[-1].below = link
        found.append(link)
        if limit is not None and len(found) >= limit:
            break
        link = _first_live(link.below, now)
    if found and found[-1].below is not None:
        found[-1].below = None  # nothing live below it (or cut there)
    return found


def open_marks() -> list[RunMark]:
    """The live marks of the current context, oldest first (claimable ones, claimed ones)."""
    found = [m for link in _live_links(_top.get(), time.monotonic()) if (m := link.mark)]
    found.reverse()
    return found


def held_marks() -> tuple[RunMark, ...]:
    """Every mark the current context still holds, oldest first: those of runs that have not
    ended (expired ones included; a run that ended has left). Empty once every run started
    in this context, or seen by it, has ended. For monitoring and tests: nothing is spliced."""
    found: list[RunMark] = []
    link = _top.get()
    while link is not None:
        if link.mark is not None:
            found.append(link.mark)
        link = link.below
    found.reverse()
    return tuple(found)


@contextmanager
def no_marks() -> Iterator[None]:
    """Run a block with no outer runs in the current context; the context's marks are back
    afterwards (tests use it to start each test clean)."""
    token = _top.set(None)
    try:
        yield
    finally:
        _top.reset(token)


def group_for(parent: object, size: int) -> RunGroup:
    """The group of a run starting now: the current one when this run is the next prompt of
    the same ``generate()`` (same parent and size, not full, its last mark still open), a
    new one otherwise."""
    top = _top.get()
    last = top.mark if top is not None else None
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
    """Open ``mark`` in the current context (see the module doc): it is seen by this context
    and by contexts copied from it from now on, until it is closed. Push a mark once."""
    now = time.monotonic()
    mark.group.members += 1
    below = _first_live(_top.get(), now)
    depth = 1 if below is None else below.depth + 1
    if depth > MAX_MARKS:
        kept = _live_links(below, now, MAX_MARKS // 2 - 1)
        for kept_depth, kept_link in enumerate(reversed(kept), 1):
            kept_link.depth = kept_depth
        below = kept[0] if kept else None
        depth = len(kept) + 1
    link = _Link(mark, below, depth)
    mark._link = link
    _top.set(link)


def claim(model: str | None, method: str, attempt: int = 0, prompts: int = 1) -> Claim:
    """The outer run one HTTP attempt of the OpenAI transport belongs to, if any.

    Args:
        model: the model the request asks for (None: the request is never paired).
        method: the request's API method (``chat.completions``, ``responses``,
            ``completions``; any other is never paired).
        attempt: the SDK's ``x-stainless-retry-count``: 0 for a first attempt, more for a
            retry, which never takes a reservation.
        prompts: how many prompts a completions request carries (it claims that many runs).

    Returns:
        The :class:`Claim`: the run the attempt belongs to and the reservation it took.
    """
    if model is None or _top.get() is None:  # the usual case: no run open in this context
        return Claim()
    chat = method in CHAT_METHODS
    if not chat and method != _COMPLETIONS:
        return Claim()
    marks = [mark for mark in open_marks() if mark.model == model and mark.chat == chat]
    if not marks:
        return Claim()
    with _claims:
        marks = [mark for mark in marks if mark.open]  # closed while we looked
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
