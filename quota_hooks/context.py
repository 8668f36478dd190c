"""The workspace of the calls made in a block of code, from context.

::

    with quota_hooks.workspace("acme", scopes={"user": "u-7"}):
        client.chat.completions.create(...)   # charged to acme and user u-7

    async with quota_hooks.workspace("acme"):
        await chain.ainvoke(...)

Every adapter reads it when the call itself names no workspace: a wrapped OpenAI client
(``x-quota-hooks-workspace`` on the call wins, then the context, then the workspace given to
``track_openai``), the LangChain handler (the run's metadata, then the context, then the
handler's ``workspace_id``) and the LiteLLM logger (the call's metadata, then the context,
then ``default_workspace``).

It is a :mod:`contextvars` variable, so it follows the code that runs in the context: across
``await``, into the tasks of ``asyncio.gather`` (each task copies the context it was created
in), and into threads started with ``contextvars.copy_context().run`` (or
``asyncio.to_thread``, ``loop.run_in_executor`` through LangChain, and anyio's worker threads,
which copy it). A plain ``threading.Thread`` starts with an empty context: its calls are
charged to the adapter's own default, as if no ``workspace()`` were open.
:class:`QuotaWorkspaceMiddleware` opens one per request of a Starlette or FastAPI app.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from .errors import ConfigurationError

__all__ = ["QuotaWorkspaceMiddleware", "WorkspaceContext", "current_workspace", "workspace"]


@dataclass(frozen=True, slots=True)
class WorkspaceContext:
    """The workspace (and scopes) of the calls made in a ``workspace()`` block."""

    workspace_id: str
    scopes: Mapping[str, str] = field(default_factory=dict)


_CURRENT: contextvars.ContextVar[WorkspaceContext | None] = contextvars.ContextVar(
    "quota_hooks_workspace", default=None)


def current_workspace() -> WorkspaceContext | None:
    """The innermost open ``workspace()`` of this context, or None."""
    return _CURRENT.get()


class workspace:
    """Charge the calls made inside the block to ``workspace_id`` (and ``scopes``) when they
    name none themselves; nests (the innermost wins), sync and async.

    Raises:
        ConfigurationError: an empty or non-string workspace, or scopes that are not a
            mapping of strings to strings, naming the value.
    """

    __slots__ = ("_context", "_tokens")

    def __init__(self, workspace_id: str, *, scopes: Mapping[str, str] | None = None) -> None:
        if not isinstance(workspace_id, str) or not workspace_id:
            raise ConfigurationError(
                f"workspace() needs a non-empty workspace id, got {workspace_id!r}")
        if scopes is not None and (not isinstance(scopes, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v
                for k, v in scopes.items())):
            raise ConfigurationError(
                f"workspace() scopes must map kinds to values (strings), got {scopes!r:.80}")
        self._context = WorkspaceContext(workspace_id, dict(scopes or {}))
        self._tokens: list[contextvars.Token[WorkspaceContext | None]] = []

    def __enter__(self) -> WorkspaceContext:
        self._tokens.append(_CURRENT.set(self._context))
        return self._context

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        _CURRENT.reset(self._tokens.pop())

    async def __aenter__(self) -> WorkspaceContext:
        return self.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.__exit__(kind, value, traceback)


_Found = str | WorkspaceContext | None
Resolver = Callable[[Any], "_Found | Awaitable[_Found]"]
"""``resolve(request)``: the workspace of a request (or None: no workspace from context)."""


class QuotaWorkspaceMiddleware:
    """An ASGI middleware (Starlette, FastAPI) that opens a :class:`workspace` for each HTTP
    request and WebSocket: ``app.add_middleware(QuotaWorkspaceMiddleware, resolve=...)``.

    Args:
        app: the ASGI app.
        resolve: ``resolve(request) -> workspace id | WorkspaceContext | None``, sync or
            async, given a ``starlette.requests.Request`` (a header, a path parameter, the
            authenticated user...). None: the request opens no workspace. An exception in it
            fails the request (who pays must never be guessed).
    """

    def __init__(self, app: Any, resolve: Resolver) -> None:
        if not callable(resolve):
            raise ConfigurationError(f"resolve must be callable, got {resolve!r}")
        self.app = app
        self.resolve = resolve

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from starlette.requests import HTTPConnection

        found = self.resolve(HTTPConnection(scope, receive))
        if isinstance(found, Awaitable):
            found = await found
        if found is None:
            await self.app(scope, receive, send)
            return
        block = (workspace(found.workspace_id, scopes=found.scopes)
                 if isinstance(found, WorkspaceContext) else workspace(found))
        with block:
            await self.app(scope, receive, send)
