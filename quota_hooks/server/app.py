"""The FastAPI router and app behind :mod:`quota_hooks.server`."""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal

import anyio

try:
    from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, WebSocket
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.websockets import WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quota_hooks.server needs FastAPI: pip install 'quota-hooks[server]'"
    ) from exc

from ..errors import ConfigurationError, StorageError
from ..manager import QuotaManager
from ..windows import parse_since

__all__ = ["TOKENS_ENV", "ApiTokens", "create_app", "quota_router"]

logger = logging.getLogger("quota_hooks")

TOKENS_ENV = "QUOTA_HOOKS_API_TOKENS"
CORS_ENV = "QUOTA_HOOKS_CORS_ORIGINS"
#: WebSocket close codes: no or unknown token, and a token of another workspace.
WS_UNAUTHORIZED, WS_FORBIDDEN = 4401, 4403
_SUBPROTOCOL = "quota-hooks"
_BEARER_PROTOCOL = "bearer."


@dataclass(frozen=True)
class Access:
    """What one token may see: every workspace (admin) or the listed ones."""

    admin: bool = False
    workspaces: frozenset[str] = frozenset()

    def allows(self, workspace_id: str) -> bool:
        return self.admin or workspace_id in self.workspaces


@dataclass(frozen=True)
class ApiTokens:
    """Bearer tokens of the API: ``*`` tokens see every workspace, the others their own.

    From text (``QUOTA_HOOKS_API_TOKENS``): comma-separated ``workspace:token`` pairs, with
    ``*`` as the workspace of an admin token, e.g. ``*:s3cret,acme:tok-a,beta:tok-b``. A
    workspace may have several tokens, and a token several workspaces. Tokens are compared in
    constant time. No tokens at all means an open server, which must listen on loopback only.
    """

    tokens: Mapping[str, Access] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, *, source: str = TOKENS_ENV) -> ApiTokens:
        """Tokens from ``workspace:token`` pairs (see the class doc)."""
        found: dict[str, Access] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            workspace, sep, token = (part.strip() for part in item.rpartition(":"))
            if not sep or not workspace or not token:
                raise ConfigurationError(
                    f"{source}: each entry must be workspace:token (or *:token for an admin), "
                    f"got {item!r}"
                )
            if len(token) < 8 or not token.isascii() or not token.isprintable():
                raise ConfigurationError(
                    f"{source}: the token of {workspace!r} must be at least 8 printable ASCII "
                    f"characters"
                )
            seen = found.get(token, Access())
            if workspace == "*":
                found[token] = Access(True, seen.workspaces)
            else:
                found[token] = Access(seen.admin, seen.workspaces | {workspace})
        return cls(found)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiTokens:
        """Tokens from ``QUOTA_HOOKS_API_TOKENS`` (none if unset)."""
        env = os.environ if environ is None else environ
        return cls.parse(env.get(TOKENS_ENV, ""))

    @property
    def open(self) -> bool:
        """True when no token is configured: every request sees everything."""
        return not self.tokens

    def access(self, token: str | None) -> Access | None:
        """What ``token`` may see; None for a missing or unknown token."""
        if self.open:
            return Access(admin=True)
        if not token:
            return None
        given = token.encode()
        match = None
        for known, access in self.tokens.items():  # every token compared: constant time
            if hmac.compare_digest(known.encode(), given):
                match = access
        return match


_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _hostname(authority: str) -> str:
    """The host of ``host[:port]`` or ``[v6]:port``, lower-cased."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


def _open_server_allows(headers: Mapping[str, str], origins: frozenset[str]) -> bool:
    """Without tokens, only pages of this server (or of ``origins``) on a loopback name may
    read it: a ``Host`` that is not loopback is DNS rebinding, and a foreign ``Origin`` is
    another site's page (browsers apply no CORS to WebSockets)."""
    host = headers.get("host", "")
    if _hostname(host) not in _LOOPBACK_NAMES:
        return False
    origin = headers.get("origin")
    if origin is None or origin in origins:
        return True
    scheme, _, rest = origin.partition("://")
    return rest.lower() == host.strip().lower() and scheme in ("http", "https")


@contextlib.contextmanager
def _unavailable_on_store_errors() -> Iterator[None]:
    try:
        yield
    except StorageError as exc:
        logger.warning("quota-hooks: the API could not read the store: %s", exc)
        raise HTTPException(503, "the usage store cannot be read right now") from exc


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check(
    tokens: ApiTokens, request: Request, workspace_id: str | None, origins: frozenset[str]
) -> Access:
    if tokens.open and not _open_server_allows(request.headers, origins):
        raise HTTPException(
            403, "this server has no API tokens: it answers its own pages on a loopback "
                 "address only (set QUOTA_HOOKS_API_TOKENS to serve others)"
        )
    access = tokens.access(_bearer(request))
    if access is None:
        raise HTTPException(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if workspace_id is not None and not access.allows(workspace_id):
        raise HTTPException(403, f"this token may not read workspace {workspace_id!r}")
    return access


def quota_router(
    manager: QuotaManager,
    *,
    tokens: ApiTokens | str | None = None,
    max_updates_per_second: float = 4.0,
    poll_interval: float = 2.0,
    dashboard: bool = True,
    allowed_origins: list[str] | None = None,
) -> APIRouter:
    """The API, WebSocket and (with ``dashboard``) the dashboard routes for ``manager``.

    Args:
        tokens: :class:`ApiTokens`, their text form, or None for ``QUOTA_HOOKS_API_TOKENS``.
        max_updates_per_second: WebSocket updates per connection at most (changes between
            two updates are coalesced into the second).
        poll_interval: seconds between status reads on a quiet WebSocket, which catch usage
            that other processes sharing the store record.
        dashboard: serve the dashboard page at ``/`` and ``/dashboard/{workspace_id}``.
        allowed_origins: browser origins, besides the server's own pages, that may use a
            server without tokens (``create_app`` passes its ``cors_origins``).
    """
    if isinstance(tokens, str):
        tokens = ApiTokens.parse(tokens, source="tokens")
    elif tokens is None:
        tokens = ApiTokens.from_env()
    for name, value in [("max_updates_per_second", max_updates_per_second),
                        ("poll_interval", poll_interval)]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigurationError(f"{name} must be a number > 0, got {value!r}")
    auth: ApiTokens = tokens
    origins = frozenset(allowed_origins or ())
    gap = 1.0 / max_updates_per_second
    manager.publish_alerts()
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Any:
        """Liveness: the server answers and its store can be read."""
        try:
            await manager.aworkspaces()
        except StorageError:  # the details (store address) are in the log, not here
            logger.warning("quota-hooks: /healthz: the store cannot be read", exc_info=True)
            return JSONResponse({"status": "degraded", "error": "the store cannot be read"},
                                status_code=503)
        return {"status": "ok", "tracking_errors": manager.tracking_errors}

    @router.get("/api/quota/status/{workspace_id:path}")
    async def status(
        workspace_id: str, request: Request, enhanced: bool = False
    ) -> dict[str, Any]:
        """The seed status JSON of one workspace (``?enhanced=true``: with the breakdowns)."""
        _check(auth, request, workspace_id, origins)
        with _unavailable_on_store_errors():
            report = await manager.astatus(workspace_id, enhanced=enhanced)
        return report.to_dict(enhanced=enhanced)

    @router.get("/api/quota/workspaces")
    async def workspaces(request: Request) -> dict[str, list[str]]:
        """The workspaces with usage that this token may read."""
        access = _check(auth, request, None, origins)
        with _unavailable_on_store_errors():
            names = await manager.aworkspaces()
        return {"workspaces": [w for w in names if access.allows(w)]}

    @router.get("/api/quota/history/{workspace_id:path}")
    async def history(
        workspace_id: str,
        request: Request,
        since: Annotated[str, Query(description="30d, 12h, 2026-01-05 or epoch seconds")] = "30d",
        by: Literal["day", "model", "method", "api_method"] = "day",
    ) -> dict[str, Any]:
        """Usage over time, per day, model or API method."""
        _check(auth, request, workspace_id, origins)
        try:
            start = parse_since(since, manager.now())
            with _unavailable_on_store_errors():
                result = await manager.ahistory(
                    workspace_id, since=start, by="api_method" if by == "method" else by
                )
        except ValueError as exc:
            raise HTTPException(422, f"since: {exc}") from exc
        return result.model_dump(mode="json")

    @router.websocket("/api/quota/ws/{workspace_id:path}")
    async def live(websocket: WebSocket, workspace_id: str) -> None:
        """``quota_update`` snapshots (on connect, then on change) and ``quota_alert``s."""
        offered = websocket.scope.get("subprotocols") or []
        token = websocket.query_params.get("token") or next(
            (p[len(_BEARER_PROTOCOL):] for p in offered if p.startswith(_BEARER_PROTOCOL)), None
        )
        if auth.open and not _open_server_allows(websocket.headers, origins):
            await websocket.close(WS_FORBIDDEN)  # another site's page: refuse the handshake
            return
        access = auth.access(token)
        await websocket.accept(subprotocol=_SUBPROTOCOL if _SUBPROTOCOL in offered else None)
        if access is None or not access.allows(workspace_id):
            # Closed after the handshake, so that a browser sees the code (a refused
            # handshake reaches its JavaScript as a bare 1006); nothing was sent.
            await websocket.close(
                WS_UNAUTHORIZED if access is None else WS_FORBIDDEN,
                "a valid token is required" if access is None
                else "this token may not read this workspace",
            )
            return
        await _stream(manager, websocket, workspace_id, gap, poll_interval)

    if dashboard:
        page = resources.files("quota_hooks.server").joinpath("static/dashboard.html")
        html = page.read_text(encoding="utf-8")

        @router.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def index() -> str:
            return html

        @router.get("/dashboard/{workspace_id:path}", response_class=HTMLResponse,
                    include_in_schema=False)
        async def dashboard_page(workspace_id: str) -> str:
            return html

    return router


async def _stream(
    manager: QuotaManager, websocket: WebSocket, workspace_id: str, gap: float, poll: float
) -> None:
    """Send updates until the client goes: a change wakes the sender, which sends at most one
    update per ``gap`` seconds, and only when the status differs from the last one sent."""
    async with anyio.create_task_group() as tasks:

        async def receive() -> None:  # notices the client leaving while nothing changes
            try:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass  # whatever a client sends (text, bytes) is ignored
            except (WebSocketDisconnect, RuntimeError):
                pass
            tasks.cancel_scope.cancel()

        tasks.start_soon(receive)
        subscription = manager.events.subscribe(frozenset({workspace_id}))
        try:
            last: dict[str, Any] | None = None
            first = True
            while True:
                if not first:
                    _, alerts = await subscription.wait(timeout=poll)
                    for alert in alerts:
                        await websocket.send_json(
                            {"type": "quota_alert", "data": alert.model_dump(mode="json")}
                        )
                first = False
                try:
                    data = (await manager.astatus(workspace_id, enhanced=True)).to_dict()
                except StorageError as exc:
                    await websocket.send_json({"type": "quota_error", "data": str(exc)})
                    await anyio.sleep(poll)
                    continue
                seen = {k: v for k, v in data.items() if k != "updated_at"}
                if seen != last:
                    last = seen
                    await websocket.send_json({"type": "quota_update", "data": data})
                await anyio.sleep(gap)  # coalesce: changes meanwhile go in the next update
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            subscription.close()
            tasks.cancel_scope.cancel()


def create_app(
    manager: QuotaManager | None = None,
    *,
    tokens: ApiTokens | str | None = None,
    cors_origins: list[str] | None = None,
    max_updates_per_second: float = 4.0,
    poll_interval: float = 2.0,
) -> FastAPI:
    """A standalone app: :func:`quota_router` plus CORS.

    Args:
        manager: the manager to serve (the process default when omitted).
        tokens: as for :func:`quota_router`.
        cors_origins: origins allowed to call the API from a browser (None: from
            ``QUOTA_HOOKS_CORS_ORIGINS``, comma-separated; none by default).
    """
    from ..manager import get_default_manager

    manager = manager if manager is not None else get_default_manager()
    if cors_origins is None:
        cors_origins = [o.strip() for o in os.environ.get(CORS_ENV, "").split(",") if o.strip()]
    app = FastAPI(title="quota-hooks", summary="LLM usage, limits and alerts, live")
    app.include_router(quota_router(
        manager, tokens=tokens, max_updates_per_second=max_updates_per_second,
        poll_interval=poll_interval, allowed_origins=cors_origins,
    ))
    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET"],
            allow_headers=["Authorization"],
        )
    app.state.manager = manager
    return app
