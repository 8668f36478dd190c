"""Nothing lost at a plain exit.

What quota-hooks still holds in memory when the interpreter exits (records queued for the
SQLite writer, alerts queued for a sink) is written out then, within :data:`EXIT_TIMEOUT`
seconds in all; what cannot be in that time is logged as lost and counted, never dropped
silently. Stores are flushed first (records matter most), then managers and alert engines are
closed (sending an alert may read the store), then stores. Objects are held weakly:
registering keeps nothing alive.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from typing import Protocol

__all__ = ["EXIT_TIMEOUT", "close_at_exit"]

logger = logging.getLogger("quota_hooks")

#: Seconds an exiting interpreter gives quota-hooks to write out what it holds.
EXIT_TIMEOUT = 5.0


class _Closable(Protocol):
    def close(self, timeout: float = ...) -> None: ...


_phases: tuple[weakref.WeakSet[_Closable], ...] = (weakref.WeakSet(), weakref.WeakSet(),
                                                    weakref.WeakSet())
_lock = threading.Lock()
_registered = False


def close_at_exit(obj: _Closable, phase: int) -> None:
    """Close ``obj`` at interpreter exit (``close(timeout=...)``), in ``phase`` order:
    0 managers, 1 alert engines, 2 stores."""
    global _registered
    with _lock:
        _phases[phase].add(obj)
        if not _registered:
            atexit.register(_close_all)
            _registered = True


def _in_child() -> None:
    """A forked child: a new lock; and a ``multiprocessing`` child, which leaves through
    ``os._exit`` (no atexit), closes what it made through multiprocessing's own exit hook."""
    global _lock
    _lock = threading.Lock()
    util = sys.modules.get("multiprocessing.util")
    if util is not None and _registered:
        # Process._bootstrap clears the finalizers, then runs the after-fork hooks.
        util.register_after_fork(_close_all, lambda _: util.Finalize(None, _close_all,
                                                                      exitpriority=0))


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_in_child)


def _close_all() -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    # Records first: a hung alert sink must not take the time the stores need.
    for store in list(_phases[2]):
        flush = getattr(store, "flush", None)
        if callable(flush):
            try:
                flush(EXIT_TIMEOUT / 2)
            except Exception:
                logger.exception("quota-hooks: flushing %r at exit failed", store)
    for phase in _phases:
        for obj in list(phase):
            try:
                obj.close(timeout=max(0.05, deadline - time.monotonic()))
            except Exception:  # an exit hook must never raise
                logger.exception("quota-hooks: closing %r at exit failed", obj)
