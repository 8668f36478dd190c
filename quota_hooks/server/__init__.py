"""The status API, the live WebSocket and the dashboard page (extra ``[server]``).

``quota_router(manager)`` is a FastAPI router to mount in your own app; ``create_app(manager)``
is a standalone app (what ``quota-hooks serve`` runs)::

    from fastapi import FastAPI
    from quota_hooks.server import quota_router

    app = FastAPI()
    app.include_router(quota_router(manager))

Routes: ``GET /api/quota/status/{workspace_id}`` (the seed JSON; ``?enhanced=true`` adds
``enhanced_tracking``), ``GET /api/quota/workspaces``, ``GET /api/quota/history/{workspace_id}
?since=30d&by=day|model|method``, ``GET /healthz``, ``WS /api/quota/ws/{workspace_id}``, and
the dashboard at ``GET /`` and ``GET /dashboard/{workspace_id}``.
"""

from __future__ import annotations

from .app import ApiTokens, create_app, quota_router

__all__ = ["ApiTokens", "create_app", "quota_router"]
