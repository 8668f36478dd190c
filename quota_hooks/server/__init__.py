"""The status API, the live WebSocket and the dashboard page (extra ``[server]``).

``quota_router(manager)`` is a FastAPI router to mount in your own app, under any prefix;
``create_app(manager)`` is a standalone app (what ``quota-hooks serve`` runs)::

    from fastapi import FastAPI
    from quota_hooks.server import quota_router

    app = FastAPI()
    app.include_router(quota_router(manager, dashboard=True), prefix="/internal/quota")

By default the router adds the API only: ``GET /api/quota/status/{workspace_id}`` (the seed
JSON; ``?enhanced=true`` adds ``enhanced_tracking``), ``GET /api/quota/workspaces``,
``GET /api/quota/history/{workspace_id}?since=30d&by=day|model|method`` and
``WS /api/quota/ws/{workspace_id}``. Opt in to the rest: ``dashboard=True`` adds the page at
``GET /`` and ``GET /dashboard/{workspace_id}`` (its script and style sheet at
``GET /quota-hooks/static/dashboard.js`` and ``.css``; every URL the page uses is relative, so it
works under any prefix), ``healthz=True`` adds ``GET /healthz``, ``metrics=True`` adds
``GET /metrics`` (the store in the Prometheus text format: the admin token or
``QUOTA_HOOKS_METRICS_TOKEN``; see :mod:`quota_hooks.server.metrics`). ``create_app`` has them
all. Without API tokens, ``create_app`` answers loopback requests only; a mounted router answers
whatever the app lets reach it (``loopback_only=True`` for the standalone behaviour).

Hardening: every response carries a Content-Security-Policy (no inline script; ``frame-ancestors``
from ``frame_ancestors=`` or ``QUOTA_HOOKS_FRAME_ANCESTORS``, ``'none'`` by default),
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``; ``?token=`` values are
redacted from uvicorn's log lines; WebSockets are capped per token and per workspace (close code
4429), and a client that does not read its updates is closed (4408) rather than queued for.
"""

from __future__ import annotations

from .app import ApiTokens, create_app, quota_router
from .metrics import METRICS_TOKEN_ENV, PrometheusMetrics

__all__ = ["METRICS_TOKEN_ENV", "ApiTokens", "PrometheusMetrics", "create_app", "quota_router"]
