"""The seed guide's names: a process-wide default manager and the lazy ``quota_manager``.

::

    from quota_hooks.compat import quota_manager      # configured from the environment
    tracker = quota_manager.get_tracker("ws-1")
    tracker.get_status_data()
    tracker.get_enhanced_status_data()

``quota_hooks.manager.quota_manager`` is the same object. Nothing happens at import: the
manager is built from the environment (:meth:`QuotaManager.from_env`) on first use.
"""

from __future__ import annotations

import threading
from typing import Any

from ._exit import close_at_exit
from .manager import QuotaManager
from .status import WorkspaceTracker

__all__ = ["WorkspaceTracker", "get_default_manager", "set_default_manager"]

_default_manager: QuotaManager | None = None
_default_lock = threading.Lock()


def get_default_manager() -> QuotaManager:
    """The process-wide manager, built from the environment on first use
    (:meth:`QuotaManager.from_env`) and closed at interpreter exit."""
    global _default_manager
    manager = _default_manager
    if manager is None:
        with _default_lock:
            if _default_manager is None:
                _default_manager = QuotaManager.from_env()
                close_at_exit(_default_manager, 0)  # alerts sent, records written
            manager = _default_manager
    return manager


def set_default_manager(manager: QuotaManager | None) -> None:
    """Replace the process-wide manager (``None``: build it from the environment again)."""
    global _default_manager
    with _default_lock:
        _default_manager = manager


def __getattr__(name: str) -> Any:
    # The seed's ``quota_manager`` object, created lazily: nothing happens at import.
    if name == "quota_manager":
        return get_default_manager()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
