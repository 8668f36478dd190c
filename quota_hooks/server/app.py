"""The FastAPI router and app behind :mod:`quota_hooks.server`."""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import anyio.to_thread

try:
    from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response, WebSocket
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quota_hooks.server needs FastAPI: pip install 'quota-hooks[server]'"
    ) from exc

from ..control import policy_json
from ..errors import ConfigurationError, StorageError
from ..manager import QuotaManager
from ..policy import QuotaPolicy, policy_key
from ..storage.base import StoredPolicy
from ..windows import parse_since
from .headers import (
    FRAME_ANCESTORS_ENV,
    BrowserHeaders,
    SecurityHeadersMiddleware,
    parse_frame_ancestors,
    secured_route_class,
)
from .live import (
    STORE_UNAVAILABLE,
    WS_TOO_MANY,
    WS_TOO_SLOW,
    ConnectionSlots,
    LiveHub,
    LiveSettings,
    serve_socket,
)
from .logs import install_token_redaction
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import METRICS_TOKEN_ENV, PrometheusMetrics

__all__ = [
    "ASSETS_PATH",
    "FRAME_ANCESTORS_ENV",
    "METRICS_TOKEN_ENV",
    "TOKENS_ENV",
    "WS_TOO_MANY",
    "WS_TOO_SLOW",
    "ApiTokens",
    "PrometheusMetrics",
    "create_app",
    "quota_router",
]

logger = logging.getLogger("quota_hooks")

TOKENS_ENV = "QUOTA_HOOKS_API_TOKENS"
CORS_ENV = "QUOTA_HOOKS_CORS_ORIGINS"
#: WebSocket close codes: no or unknown token, and a token of another workspace (and, from
#: :mod:`.live`, ``WS_TOO_MANY`` 4429 over a socket cap, ``WS_TOO_SLOW`` 4408 for a client
#: that does not read its updates).
WS_UNAUTHORIZED, WS_FORBIDDEN = 4401, 4403
#: Where the dashboard's script and style sheet are served (the page has neither inline).
ASSETS_PATH = "/quota-hooks/static"
#: The browser pieces for pages of your own (ES modules, no build step), always served at
#: <root>api/quota/static/: the REST and WebSocket client, the React hook, the element (and
#: the helpers it draws with).
_PIECES = ("quota-monitor.js", "use-quota-monitor.js", "quota-budget.js", "quota-ui.js")
#: The dashboard page is <quota-budget layout="full">: its script imports the element's
#: modules from beside itself.
_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8",
           "dashboard.css": "text/css; charset=utf-8",
           **{name: "text/javascript; charset=utf-8" for name in _PIECES
              if name != "use-quota-monitor.js"}}
#: Where dashboard.html says "the router's root" (replaced by a relative ./ or ../../).
_ROOT_MARK = "{{root}}"
_SUBPROTOCOL = "quota-hooks"
_BEARER_PROTOCOL = "bearer."


@dataclass(frozen=True)
class Access:
    """What one token may see: every workspace (admin) or the listed ones."""

    admin: bool = False
    workspaces: frozenset[str] = frozenset()

    def allows(self, workspace_id: str) -> bool:
        return self.admin or workspace_id in self.workspaces


@dataclass(frozen=True, repr=False)
class ApiTokens:
    """Bearer tokens of the API: ``*`` tokens see every workspace, the others their own.

    From text (``QUOTA_HOOKS_API_TOKENS``): comma-separated ``workspace:token`` pairs, with
    ``*`` as the workspace of an admin token, e.g. ``*:s3cret,acme:tok-a,beta:tok-b``. A
    workspace may have several tokens, and a token several workspaces. Tokens are compared in
    constant time. No tokens at all means an open API: :func:`create_app` (what ``quota-hooks
    serve`` runs) then answers loopback requests only; a mounted :func:`quota_router` leaves
    access to the app that mounts it.
    """

    tokens: Mapping[str, Access] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, *, source: str = TOKENS_ENV) -> ApiTokens:
        """Tokens from ``workspace:token`` pairs (see the class doc)."""
        found: dict[str, Access] = {}
        for number, item in enumerate(filter(None, (p.strip() for p in text.split(","))), 1):
            workspace, sep, token = (part.strip() for part in item.rpartition(":"))
            if not sep or not workspace or not token:
                # The entry is not shown: a malformed one is most likely a token ("acme=tok").
                raise ConfigurationError(
                    f"{source}: each entry must be workspace:token (or *:token for an admin); "
                    f"entry {number} ({len(item)} characters) is not"
                )
            if len(token) < 8 or not token.isascii() or not token.isprintable():
                raise ConfigurationError(
                    f"{source}: the token of entry {number} must be at least 8 printable "
                    f"ASCII characters"
                )
            seen = found.get(token, Access())
            if workspace == "*":
                found[token] = Access(True, seen.workspaces)
            else:
                found[token] = Access(seen.admin, seen.workspaces | {workspace})
        return cls(found)

    def __repr__(self) -> str:
        """Counts only: a repr (in a traceback's locals, an error reporter) shows no token."""
        admins = sum(1 for access in self.tokens.values() if access.admin)
        workspaces = sorted({w for access in self.tokens.values() for w in access.workspaces})
        return (f"ApiTokens({len(self.tokens)} token(s), {admins} admin, "
                f"workspaces={workspaces!r})")

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


def _same_site(headers: Mapping[str, str], origins: frozenset[str]) -> bool:
    """No ``Origin`` (not a browser page), one of ``origins``, or a page of this very host."""
    origin = headers.get("origin")
    if origin is None or origin in origins:
        return True
    scheme, _, rest = origin.partition("://")
    return rest.lower() == headers.get("host", "").strip().lower() and scheme in ("http", "https")


def _open_server_allows(headers: Mapping[str, str], origins: frozenset[str]) -> bool:
    """Without tokens, only pages of this server (or of ``origins``) on a loopback name may
    read it: a ``Host`` that is not loopback is DNS rebinding, and a foreign ``Origin`` is
    another site's page (browsers apply no CORS to WebSockets)."""
    if _hostname(headers.get("host", "")) not in _LOOPBACK_NAMES:
        return False
    return _same_site(headers, origins)


def _relative_root(scope: Mapping[str, Any], tail: str) -> str:
    """The relative URL (``./``, ``../``, ``../../``...) from a page of the router back to the
    router's root, whatever prefix it is mounted under (and whatever a proxy strips).

    ``tail`` is the part of the decoded path after the root (``""`` for the index page,
    ``dashboard/<workspace id>`` for a workspace's page). The raw path is read from its end,
    so that a workspace id with an encoded ``/`` (``team%2Fa``) counts as one segment, as the
    browser sees it.
    """
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    segments = path.split("/")
    decoded: list[str] = []
    length = -1
    for segment in reversed(segments[1:]):
        decoded.append(unquote(segment))
        length += len(decoded[-1]) + 1
        if length >= len(tail):
            if length == len(tail) and "/".join(reversed(decoded)) == tail:
                return "../" * (len(decoded) - 1) or "./"
            break
    return "../" * tail.count("/") or "./"  # not found: as many levels as the decoded path


@contextlib.contextmanager
def _unavailable_on_store_errors() -> Iterator[None]:
    try:
        yield
    except StorageError as exc:
        logger.warning("quota-hooks: the API could not read the store: %s", exc)
        raise HTTPException(503, STORE_UNAVAILABLE) from exc


@contextlib.contextmanager
def _control_plane() -> Iterator[None]:
    """A store that keeps no policies: 501, naming it."""
    try:
        yield
    except ConfigurationError as exc:
        raise HTTPException(501, str(exc)) from exc


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check(
    tokens: ApiTokens, request: Request, workspace_id: str | None, origins: frozenset[str],
    loopback_only: bool,
) -> Access:
    if tokens.open and loopback_only and not _open_server_allows(request.headers, origins):
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


def _metrics_token(value: str | None) -> str | None:
    """The ``/metrics`` token: ``value``, else ``QUOTA_HOOKS_METRICS_TOKEN`` (None: only the
    admin tokens, or loopback on a server without tokens). At least 8 printable ASCII
    characters, like the API tokens."""
    source = "metrics_token"
    if value is None:
        value = os.environ.get(METRICS_TOKEN_ENV, "").strip()
        source = METRICS_TOKEN_ENV
        if not value:
            return None
    if not isinstance(value, str) or len(value) < 8 or not value.isascii() \
            or not value.isprintable() or " " in value:
        raise ConfigurationError(
            f"{source} must be at least 8 printable ASCII characters without spaces")
    return value


def _check_metrics(tokens: ApiTokens, metrics_token: str | None, request: Request,
                   origins: frozenset[str], loopback_only: bool) -> None:
    """``/metrics`` answers the metrics token, an admin token, or, on a server without any
    token at all, what every route of such a server answers (with ``loopback_only``: a
    loopback request)."""
    given = _bearer(request)
    if metrics_token is not None and given is not None and hmac.compare_digest(
            metrics_token.encode(), given.encode()):
        return
    if tokens.open and metrics_token is None:
        _check(tokens, request, None, origins, loopback_only)
        return
    access = None if tokens.open else tokens.access(given)
    if access is None:
        raise HTTPException(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not access.admin:
        raise HTTPException(
            403, f"/metrics needs an admin token or the {METRICS_TOKEN_ENV} token")


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is a number (an int with
    ``integer``) above 0."""
    positive = False
    if isinstance(value, int) and not isinstance(value, bool):
        positive = value > 0
    elif isinstance(value, float) and not integer:
        positive = value > 0  # NaN is not
    if not positive:
        what = "an integer" if integer else "a number"
        raise ConfigurationError(f"{name} must be {what} > 0, got {value!r}")


def quota_router(
    manager: QuotaManager,
    *,
    tokens: ApiTokens | str | None = None,
    max_updates_per_second: float = 4.0,
    poll_interval: float = 2.0,
    dashboard: bool = False,
    healthz: bool = False,
    allowed_origins: list[str] | None = None,
    frame_ancestors: str | Sequence[str] | None = None,
    max_connections_per_token: int = 32,
    max_connections_per_workspace: int = 32,
    send_timeout: float = 10.0,
    max_pending: int = 32,
    metrics: bool | PrometheusMetrics = False,
    metrics_token: str | None = None,
    loopback_only: bool = False,
) -> APIRouter:
    """The API routes for ``manager`` (``/api/quota/...``: status, workspaces, history and the
    live WebSocket); the dashboard page, ``/healthz`` and ``/metrics`` when asked for.

    Mount it under any prefix (``app.include_router(quota_router(m, dashboard=True),
    prefix="/internal/quota")``): every path below is relative to that prefix, and the page
    finds its script, style sheet and API relative to where it is served. Without tokens the
    routes answer every request that reaches them (use ``include_router(...,
    dependencies=[...])`` for your app's own auth), but a WebSocket from another site's page
    (an ``Origin`` that is neither this host nor one of ``allowed_origins``) is refused.

    Every response of these routes carries ``X-Content-Type-Options: nosniff``,
    ``Referrer-Policy: no-referrer`` and a Content-Security-Policy (see
    :mod:`quota_hooks.server.headers`); ``?token=`` values are redacted from uvicorn's logs
    (see :mod:`quota_hooks.server.logs`).

    Args:
        tokens: :class:`ApiTokens`, their text form, or None for ``QUOTA_HOOKS_API_TOKENS``.
        max_updates_per_second: WebSocket updates per workspace at most (changes between
            two updates are coalesced into the second).
        poll_interval: seconds between status reads of a quiet workspace, which catch usage
            that other processes sharing the store record.
        dashboard: serve the dashboard page at ``/`` and ``/dashboard/{workspace_id}`` (and
            its script and style sheet under ``/quota-hooks/static/``).
        healthz: serve ``GET /healthz`` (no token: whether the store can be read).
        allowed_origins: browser origins, besides the server's own pages, that may use a
            server without tokens (``create_app`` passes its ``cors_origins``).
        frame_ancestors: the sites that may frame the pages (CSP ``frame-ancestors``):
            ``'none'`` (the default), ``'self'`` or origins, space-separated or a list; None
            reads ``QUOTA_HOOKS_FRAME_ANCESTORS``.
        max_connections_per_token: WebSockets open at once with one token (on a server
            without tokens: in all); past it a socket is closed with 4429.
        max_connections_per_workspace: WebSockets open at once on one workspace, whatever
            their tokens; past it a socket is closed with 4429.
        send_timeout: seconds one WebSocket frame may take to send; a client that reads
            slower is closed with 4408.
        max_pending: alerts that may wait for one WebSocket (status updates never queue:
            the newest replaces the one not sent yet); past it the socket is closed with 4408.
        metrics: True to serve ``GET /metrics`` (the store in the Prometheus text format, see
            :mod:`quota_hooks.server.metrics`); a :class:`PrometheusMetrics` to set its label
            limits; False (the default) for none.
        metrics_token: a bearer token that may read ``/metrics`` only (None reads
            ``QUOTA_HOOKS_METRICS_TOKEN``); admin tokens may read it too.
        loopback_only: without tokens, answer only requests to a loopback host name
            (``127.0.0.1``, ``localhost``, ``::1``) from this server's own pages or
            ``allowed_origins``: the DNS-rebinding guard of a standalone server without tokens
            (:func:`create_app` sets it). No effect when tokens are configured.
    """
    if isinstance(tokens, str):
        tokens = ApiTokens.parse(tokens, source="tokens")
    elif tokens is None:
        tokens = ApiTokens.from_env()
    for name, value in [("max_updates_per_second", max_updates_per_second),
                        ("poll_interval", poll_interval), ("send_timeout", send_timeout)]:
        _positive(name, value)
    for name, value in [("max_connections_per_token", max_connections_per_token),
                        ("max_connections_per_workspace", max_connections_per_workspace),
                        ("max_pending", max_pending)]:
        _positive(name, value, integer=True)
    auth: ApiTokens = tokens
    guard = bool(loopback_only)
    scrape_token = _metrics_token(metrics_token)
    if not isinstance(metrics, (bool, PrometheusMetrics)):
        raise ConfigurationError(
            f"metrics must be True, False or a PrometheusMetrics, got {metrics!r}")
    exporter: PrometheusMetrics | None = None
    if isinstance(metrics, PrometheusMetrics):
        exporter = metrics
    elif metrics:
        exporter = PrometheusMetrics(manager)
    origins = frozenset(allowed_origins or ())
    headers = BrowserHeaders.build(parse_frame_ancestors(frame_ancestors))
    slots = ConnectionSlots(max_connections_per_token, max_connections_per_workspace)
    hub = LiveHub(manager, LiveSettings(gap=1.0 / max_updates_per_second, poll=poll_interval,
                                        send_timeout=send_timeout, max_pending=max_pending))
    install_token_redaction()
    router = APIRouter(route_class=secured_route_class(headers))

    if healthz:
        @router.get("/healthz")
        async def health() -> Any:
            """Liveness: the server answers and its store can be read."""
            try:
                await manager.aworkspaces()
            except StorageError:  # the details (store address) are in the log, not here
                logger.warning("quota-hooks: /healthz: the store cannot be read",
                               exc_info=True)
                return JSONResponse({"status": "degraded", "error": STORE_UNAVAILABLE},
                                    status_code=503)
            return {"status": "ok", "tracking_errors": manager.tracking_errors}

    @router.get("/api/quota/status/{workspace_id:path}")
    async def status(
        workspace_id: str, request: Request, enhanced: bool = False
    ) -> dict[str, Any]:
        """The seed status JSON of one workspace (``?enhanced=true``: with the breakdowns)."""
        _check(auth, request, workspace_id, origins, guard)
        with _unavailable_on_store_errors():
            report = await manager.astatus(workspace_id, enhanced=enhanced)
        return report.to_dict(enhanced=enhanced)

    @router.get("/api/quota/workspaces")
    async def workspaces(request: Request) -> dict[str, list[str]]:
        """The workspaces with usage that this token may read."""
        access = _check(auth, request, None, origins, guard)
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
        _check(auth, request, workspace_id, origins, guard)
        try:
            start = parse_since(since, manager.now())
            with _unavailable_on_store_errors():
                result = await manager.ahistory(
                    workspace_id, since=start, by="api_method" if by == "method" else by
                )
        except ValueError as exc:
            raise HTTPException(422, f"since: {exc}") from exc
        return result.model_dump(mode="json")

    @router.get("/api/quota/alerts/{workspace_id:path}")
    async def alerts(
        workspace_id: str, request: Request,
        n: Annotated[int, Query(ge=1, le=1000, description="how many, newest first")] = 50,
    ) -> dict[str, Any]:
        """The workspace's alert history, kept in the store: every process's alerts, policy
        changes and resets, newest first."""
        _check(auth, request, workspace_id, origins, guard)
        with _unavailable_on_store_errors():
            kept = await manager.aalert_history(workspace_id, n)
        return {"workspace_id": workspace_id,
                "alerts": [alert.model_dump(mode="json") for alert in kept]}

    def _admin(request: Request) -> None:
        if not _check(auth, request, None, origins, guard).admin:
            raise HTTPException(403, "policies are read and written with an admin token")

    def _policy_key(name: str) -> str:
        try:
            return policy_key(name)
        except ConfigurationError as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get("/api/quota/policies")
    async def policies(request: Request) -> dict[str, Any]:
        """Every stored policy (admin token)."""
        _admin(request)
        with _unavailable_on_store_errors(), _control_plane():
            table = await anyio.to_thread.run_sync(manager.stored_policies)
        return {"version": table.version,
                "policies": [policy_json(k, table.policies[k]) for k in sorted(table.policies)]}

    async def _stored(key: str) -> StoredPolicy:
        """The stored policy ``key``; a 404 when there is none."""
        with _unavailable_on_store_errors(), _control_plane():
            table = await anyio.to_thread.run_sync(manager.stored_policies)
        if key not in table.policies:
            raise HTTPException(404, f"{key} has no stored policy")
        return table.policies[key]

    @router.get("/api/quota/policies/{name:path}")
    async def get_policy(name: str, request: Request) -> dict[str, Any]:
        """One stored policy (admin token): ``acme`` (a workspace), ``team:ml``, ``*``."""
        _admin(request)
        key = _policy_key(name)
        return policy_json(key, await _stored(key))

    @router.put("/api/quota/policies/{name:path}")
    async def put_policy(name: str, request: Request) -> dict[str, Any]:
        """Change the stored policy of ``name`` (admin token): the body's fields (a JSON
        object of QuotaPolicy fields); the others keep their value (the stored policy, else
        the key's default: the store's ``*`` or ``kind:*``, else the seed defaults for a
        workspace and no limit for a scope). A change made meanwhile is never overwritten."""
        _admin(request)
        key = _policy_key(name)
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(422, "the body must be a policy as a JSON object") from None
        if not isinstance(body, dict):
            raise HTTPException(422, "the body must be a policy as a JSON object")
        unknown = sorted(set(body) - set(QuotaPolicy.model_fields))
        if unknown:
            raise HTTPException(422, f"body: unknown policy field(s) {unknown}")
        with _unavailable_on_store_errors():
            try:
                version, policy = await anyio.to_thread.run_sync(functools.partial(
                    manager.update_policy, key, body, by="the REST API"))
            except ConfigurationError as exc:
                raise HTTPException(422, str(exc)) from None
        return {"key": key, "version": version, "policy": policy.model_dump(mode="json")}

    @router.delete("/api/quota/policies/{name:path}")
    async def delete_policy(name: str, request: Request) -> dict[str, Any]:
        """Delete a stored policy (admin token)."""
        _admin(request)
        key = _policy_key(name)
        await _stored(key)
        with _unavailable_on_store_errors(), _control_plane():
            version = await anyio.to_thread.run_sync(
                functools.partial(manager.put_policies, {key: None}, by="the REST API"))
        return {"key": key, "deleted": True, "version": version}

    @router.post("/api/quota/reset/{name:path}")
    async def reset_usage(name: str, request: Request,
                          period: Literal["day", "week", "month"] = "month") -> dict[str, Any]:
        """Start a workspace's (or scope's) budget ``period`` (``?period=day``, ``week``;
        the month by default) again (admin token); kept in its alert history."""
        _admin(request)
        try:
            with _unavailable_on_store_errors():
                taken = await anyio.to_thread.run_sync(
                    functools.partial(manager.reset_usage, name, by="the REST API",
                                      period=period))
        except ConfigurationError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"key": policy_key(name), "period": period,
                "reset_usd": format(taken.normalize(), "f")}

    pieces_dir = resources.files("quota_hooks.server").joinpath("static")
    pieces = {name: pieces_dir.joinpath(name).read_bytes() for name in _PIECES}

    @router.get("/api/quota/static/{name}", include_in_schema=False)
    async def piece(name: str) -> Response:
        """The browser pieces: ``quota-monitor.js``, ``use-quota-monitor.js`` and
        ``quota-budget.js`` with ``quota-ui.js`` (they hold no data: no token needed)."""
        if name not in pieces:
            raise HTTPException(404, "Not Found")
        return Response(pieces[name], media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    if exporter is not None:
        scraped: PrometheusMetrics = exporter

        @router.get("/metrics", include_in_schema=False)
        async def prometheus_metrics(request: Request) -> Response:
            """The store's usage in the Prometheus text format (every process's)."""
            _check_metrics(auth, scrape_token, request, origins, guard)
            with _unavailable_on_store_errors():
                body = await anyio.to_thread.run_sync(scraped.render)
            return Response(body, media_type=METRICS_CONTENT_TYPE,
                            headers={"Cache-Control": "no-store"})

    @router.websocket("/api/quota/ws/{workspace_id:path}")
    async def live(websocket: WebSocket, workspace_id: str) -> None:
        """``quota_update`` snapshots (on connect, then on change) and ``quota_alert``s; a
        ``quota_error`` with a fixed message while the store cannot be read."""
        offered = websocket.scope.get("subprotocols") or []
        token = websocket.query_params.get("token") or next(
            (p[len(_BEARER_PROTOCOL):] for p in offered if p.startswith(_BEARER_PROTOCOL)), None
        )
        if auth.open and not (_open_server_allows(websocket.headers, origins) if guard
                              else _same_site(websocket.headers, origins)):
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
        # Over a cap: closed after the handshake too, with a reason the page shows. Sockets
        # of a server without tokens share one count.
        with slots.hold(None if auth.open else token, workspace_id) as refusal:
            if refusal is not None:
                await websocket.close(WS_TOO_MANY, refusal)
                return
            await serve_socket(hub, websocket, workspace_id)

    if dashboard:
        static = resources.files("quota_hooks.server").joinpath("static")
        template = static.joinpath("dashboard.html").read_text(encoding="utf-8")
        assets = {name: static.joinpath(name).read_bytes() for name in _ASSETS}

        def page(request: Request, tail: str) -> str:
            # Only "./" or "../" repeated can go in: nothing of the request's own text.
            return template.replace(_ROOT_MARK, _relative_root(request.scope, tail))

        @router.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def index(request: Request) -> str:
            return page(request, "")

        @router.get("/dashboard/{workspace_id:path}", response_class=HTMLResponse,
                    include_in_schema=False)
        async def dashboard_page(workspace_id: str, request: Request) -> str:
            return page(request, "dashboard/" + workspace_id)

        @router.get(ASSETS_PATH + "/{name}", include_in_schema=False)
        async def asset(name: str) -> Response:
            """The page's script and style sheet, and the element's modules it imports."""
            if name not in assets:
                raise HTTPException(404, "Not Found")
            return Response(assets[name], media_type=_ASSETS[name],
                            headers={"Cache-Control": "no-cache"})

    return router


def create_app(
    manager: QuotaManager | None = None,
    *,
    tokens: ApiTokens | str | None = None,
    cors_origins: list[str] | None = None,
    max_updates_per_second: float = 4.0,
    poll_interval: float = 2.0,
    frame_ancestors: str | Sequence[str] | None = None,
    max_connections_per_token: int = 32,
    max_connections_per_workspace: int = 32,
    send_timeout: float = 10.0,
    max_pending: int = 32,
    metrics: bool | PrometheusMetrics = True,
    metrics_token: str | None = None,
) -> FastAPI:
    """A standalone app (what ``quota-hooks serve`` runs): :func:`quota_router` with every
    route (the API, the dashboard at ``/``, ``/healthz`` and ``/metrics``), CORS, and the
    browser security headers on every response (404s and validation errors included).
    Without tokens it answers loopback requests only (``loopback_only``).

    Args:
        manager: the manager to serve (the process default when omitted).
        tokens: as for :func:`quota_router`.
        cors_origins: origins allowed to call the API from a browser (None: from
            ``QUOTA_HOOKS_CORS_ORIGINS``, comma-separated; none by default).
        frame_ancestors: the sites that may frame the dashboard (None: from
            ``QUOTA_HOOKS_FRAME_ANCESTORS``; none by default); see :func:`quota_router`.
        max_updates_per_second, poll_interval, max_connections_per_token,
        max_connections_per_workspace, send_timeout, max_pending, metrics, metrics_token: as
            for :func:`quota_router`.
    """
    from ..compat import get_default_manager

    manager = manager if manager is not None else get_default_manager()
    if cors_origins is None:
        cors_origins = [o.strip() for o in os.environ.get(CORS_ENV, "").split(",") if o.strip()]
    ancestors = parse_frame_ancestors(frame_ancestors)
    app = FastAPI(title="quota-hooks", summary="LLM usage, limits and alerts, live")
    app.include_router(quota_router(
        manager, tokens=tokens, max_updates_per_second=max_updates_per_second,
        poll_interval=poll_interval, dashboard=True, healthz=True,
        allowed_origins=cors_origins, frame_ancestors=ancestors,
        max_connections_per_token=max_connections_per_token,
        max_connections_per_workspace=max_connections_per_workspace,
        send_timeout=send_timeout, max_pending=max_pending, metrics=metrics,
        metrics_token=metrics_token, loopback_only=True,
    ))
    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET"],
            allow_headers=["Authorization"],
        )
    app.add_middleware(SecurityHeadersMiddleware,  # outermost: CORS answers get them too
                       headers=BrowserHeaders.build(ancestors))
    app.state.manager = manager
    return app
