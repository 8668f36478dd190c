"""How tracking itself is doing: failures inside tracking, the ``degraded`` window, and the
provider's own rate-limit headers, under one lock.

A failure inside tracking never reaches the caller's call: it is counted, logged once per
kind, and keeps its workspace (or every workspace, ``"*"``) ``degraded`` for
:data:`DEGRADED_SECONDS`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

__all__ = ["DEGRADED_SECONDS", "Health"]

logger = logging.getLogger("quota_hooks")

#: How long a failure inside tracking keeps a workspace ``degraded``.
DEGRADED_SECONDS = 300.0
#: Workspaces whose failures and provider limits are kept at most (the oldest give way).
MAX_WORKSPACES = 10_000


class Health:
    """Failures inside tracking, and provider limits, per workspace."""

    __slots__ = ("_failures", "_lock", "_logged", "_provider_limits", "errors")

    def __init__(self) -> None:
        self.errors = 0
        """How many failures inside tracking were caught (never raised into a call)."""
        self._failures: dict[str, float] = {}
        self._logged: set[str] = set()
        self._provider_limits: dict[str, dict[str, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def failed(self, kind: str, exc: BaseException, workspace_id: str | None, now: float) -> None:
        """Count a failure of ``kind`` at ``now``; the first of each kind is logged with its
        traceback, the others only counted."""
        with self._lock:
            self.errors += 1
            failures = self._failures
            key = workspace_id if workspace_id is not None else "*"
            if key not in failures and len(failures) >= MAX_WORKSPACES:
                for stale in [k for k, at in failures.items() if now - at >= DEGRADED_SECONDS]:
                    del failures[stale]
                if len(failures) >= MAX_WORKSPACES:
                    del failures[next(iter(failures))]
            failures[key] = now
            first = kind not in self._logged
            self._logged.add(kind)
        if first:
            logger.warning(
                "quota-hooks: tracking failed (%s) and was skipped; the call went on. "
                "Further %r failures are counted, not logged.", kind, kind, exc_info=exc,
            )

    def degraded(self, workspace_id: str, now: float, store: object = None) -> bool:
        """True when tracking failed for ``workspace_id`` (or everywhere) in the last
        :data:`DEGRADED_SECONDS`, or the ``store`` itself says it is failing (a full disk,
        dropped records: its ``health()`` is not None)."""
        store_health = getattr(store, "health", None)
        if callable(store_health) and store_health() is not None:
            return True
        failures = self._failures
        if not failures:
            return False
        last = max(failures.get(workspace_id, -1.0), failures.get("*", -1.0))
        return last >= 0 and now - last < DEGRADED_SECONDS

    def note_limits(self, workspace_id: str, provider: str, headers: Mapping[str, str]) -> None:
        """Keep the provider's latest ``x-ratelimit-*`` headers of ``workspace_id``:
        ``{"x-ratelimit-remaining-requests": "499"}`` shows as ``{"remaining_requests": "499"}``."""
        limits = {
            key.lower().removeprefix("x-ratelimit-").replace("-", "_"): str(value)
            for key, value in headers.items()
        }
        with self._lock:
            table = self._provider_limits
            if workspace_id not in table and len(table) >= MAX_WORKSPACES:
                del table[next(iter(table))]
            table.setdefault(workspace_id, {})[provider] = limits

    def provider_limits(self, workspace_id: str) -> dict[str, dict[str, str]]:
        """The latest provider limits of ``workspace_id``, per provider."""
        return self._provider_limits.get(workspace_id, {})
