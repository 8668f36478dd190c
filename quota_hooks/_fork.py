"""Objects with background threads or locks, made whole again in a child process after
``os.fork()`` (gunicorn ``--preload``, Celery's prefork pool, ``multiprocessing`` with the
fork start method).

A child has none of its parent's threads, and a lock that another thread held at the fork
stays held in it forever: a store's writer thread, the alert thread and the policy refresher
would be gone, and every record a child queued for a writer lost. Each object registered here
renews its locks and threads in the child, and forgets what its parent still owns (queued
records, held leases, open connections): the parent writes and settles those itself.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Protocol

__all__ = ["renew_after_fork"]

logger = logging.getLogger("quota_hooks")


class _Renewable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_LIVE: weakref.WeakSet[_Renewable] = weakref.WeakSet()
#: Objects that must be quiet while a fork is made (``_before_fork``, then
#: ``_after_fork_in_parent`` in the parent): a SQLite store, whose connections must not be in
#: use by another thread at the fork (the child could never close them).
_QUIESCED: weakref.WeakSet[Any] = weakref.WeakSet()
_held: list[Any] = []


def renew_after_fork(obj: _Renewable, *, quiesce: bool = False) -> None:
    """Call ``obj._after_fork_in_child()`` in every child process forked from now on (while
    ``obj`` lives); with ``quiesce``, also ``obj._before_fork()`` before each fork and
    ``obj._after_fork_in_parent()`` after it, in the parent."""
    _LIVE.add(obj)
    if quiesce:
        _QUIESCED.add(obj)


def _before() -> None:
    _held.clear()
    for obj in list(_QUIESCED):
        try:
            obj._before_fork()
        except Exception:  # the fork goes on; this object is renewed in the child anyway
            logger.exception("quota-hooks: quieting %r before fork() failed", obj)
            continue
        _held.append(obj)


def _in_parent() -> None:
    for obj in _held:
        try:
            obj._after_fork_in_parent()
        except Exception:
            logger.exception("quota-hooks: resuming %r after fork() failed", obj)
    _held.clear()


def _in_child() -> None:
    _held.clear()
    for obj in list(_LIVE):
        try:
            obj._after_fork_in_child()
        except Exception:  # a child must start whatever one object does
            logger.exception("quota-hooks: renewing %r after fork() failed", obj)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_before, after_in_parent=_in_parent, after_in_child=_in_child)
