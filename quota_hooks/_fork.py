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
from typing import Protocol

__all__ = ["renew_after_fork"]

logger = logging.getLogger("quota_hooks")


class _Renewable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_LIVE: weakref.WeakSet[_Renewable] = weakref.WeakSet()


def renew_after_fork(obj: _Renewable) -> None:
    """Call ``obj._after_fork_in_child()`` in every child process forked from now on (while
    ``obj`` lives)."""
    _LIVE.add(obj)


def _in_child() -> None:
    for obj in list(_LIVE):
        try:
            obj._after_fork_in_child()
        except Exception:  # a child must start whatever one object does
            logger.exception("quota-hooks: renewing %r after fork() failed", obj)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_in_child)
