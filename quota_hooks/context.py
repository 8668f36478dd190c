"""The workspace of the calls made in a block of code, and their usage, from context.

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

``with quota_hooks.track() as usage:`` sums the calls recorded inside a block (requests,
tokens by kind, exact cost, per model), whichever adapter saw them, with no store read:
the manager adds each call it records to the blocks open where the call was made.
``@quota_hooks.tracked(workspace_id=...)`` does both for a function.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType, TracebackType
from typing import Any, Generic, TypeVar

from .errors import ConfigurationError

__all__ = ["BlockUsage", "ModelBlockUsage", "QuotaWorkspaceMiddleware", "WorkspaceContext",
           "current_workspace", "open_blocks", "track", "tracked", "workspace"]


@dataclass(frozen=True, slots=True)
class WorkspaceContext:
    """The workspace (and scopes) of the calls made in a ``workspace()`` block.

    Raises:
        ConfigurationError: an empty or blank workspace id, or scopes that are not a mapping
            of non-empty strings to non-empty strings, naming the value.
    """

    workspace_id: str
    scopes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.workspace_id, str) or not self.workspace_id.strip():
            raise ConfigurationError(
                f"workspace() needs a non-empty workspace id, got {self.workspace_id!r}")
        scopes = self.scopes
        if not isinstance(scopes, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v
                for k, v in scopes.items()):
            raise ConfigurationError(
                f"workspace() scopes must map kinds to values (strings), got {scopes!r:.80}")
        object.__setattr__(self, "scopes", MappingProxyType(dict(scopes)))  # read-only


_CURRENT: contextvars.ContextVar[WorkspaceContext | None] = contextvars.ContextVar(
    "quota_hooks_workspace", default=None)
# What each open block replaced, innermost last, per context: one block object may be open
# in several tasks or threads at once, and each restores its own context's value.
_REPLACED: contextvars.ContextVar[tuple[WorkspaceContext | None, ...]] = contextvars.ContextVar(
    "quota_hooks_workspace_replaced", default=())


def current_workspace() -> WorkspaceContext | None:
    """The innermost open ``workspace()`` of this context, or None."""
    return _CURRENT.get()


_T = TypeVar("_T")


class _Block(Generic[_T]):
    """A sync context manager that is an async one too (entering touches no I/O)."""

    __slots__ = ()

    def __enter__(self) -> _T:
        raise NotImplementedError

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> _T:
        return self.__enter__()

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.__exit__(kind, value, traceback)


class workspace(_Block[WorkspaceContext]):
    """Charge the calls made inside the block to ``workspace_id`` (and ``scopes``) when they
    name none themselves; nests (the innermost wins), sync and async. One object may be
    entered in several tasks or threads at once (a block cached per tenant): each context
    keeps its own.

    Raises:
        ConfigurationError: an empty or non-string workspace, or scopes that are not a
            mapping of strings to strings, naming the value.
    """

    __slots__ = ("_context",)

    def __init__(self, workspace_id: str, *, scopes: Mapping[str, str] | None = None) -> None:
        self._context = WorkspaceContext(workspace_id, scopes if scopes is not None else {})

    def __enter__(self) -> WorkspaceContext:
        _REPLACED.set((*_REPLACED.get(), _CURRENT.get()))
        _CURRENT.set(self._context)
        return self._context

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        replaced = _REPLACED.get()
        if not replaced:
            raise RuntimeError("workspace() exited without being entered in this context")
        _CURRENT.set(replaced[-1])
        _REPLACED.set(replaced[:-1])



_Found = str | WorkspaceContext | None
Resolver = Callable[[Any], "_Found | Awaitable[_Found]"]
"""``resolve(request)``: the workspace of a request (or None: no workspace from context)."""


class QuotaWorkspaceMiddleware:
    """An ASGI middleware (Starlette, FastAPI) that opens a :class:`workspace` for each HTTP
    request and WebSocket: ``app.add_middleware(QuotaWorkspaceMiddleware, resolve=...)``.

    Args:
        app: the ASGI app.
        resolve: ``resolve(request) -> workspace id | WorkspaceContext | None``, sync or
            async, given a ``starlette.requests.Request`` (a ``WebSocket``'s
            ``HTTPConnection`` for a socket): read its headers, cookies, query or
            ``scope["user"]``, never its body (the endpoint reads that). It runs on the event
            loop, so keep it cheap. None or ``""``: the request opens no workspace. An
            exception in it fails the request (who pays must never be guessed).
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
        from starlette.requests import HTTPConnection, Request

        connection = (Request(scope, receive) if scope["type"] == "http"
                      else HTTPConnection(scope, receive))
        found = self.resolve(connection)
        if isinstance(found, Awaitable):
            found = await found
        if found is None or found == "":
            await self.app(scope, receive, send)
            return
        block = (workspace(found.workspace_id, scopes=found.scopes)
                 if isinstance(found, WorkspaceContext) else workspace(found))
        with block:
            await self.app(scope, receive, send)


# ---------------------------------------------------------------------- the usage of a block
@dataclass(slots=True)
class ModelBlockUsage:
    """One model's part of a :class:`BlockUsage`."""

    requests: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced: int = 0


@dataclass(slots=True)
class BlockUsage:
    """The calls recorded inside a ``track()`` block (and the blocks it contains), summed as
    the manager records them: no store is read.

    ``cost_usd`` is what the priced calls cost, exactly; the calls whose model has no price
    are counted in ``unpriced`` (their cost is unknown, never 0). Tokens follow
    :class:`~quota_hooks.UsageRecord`: ``input_tokens`` include the cached and cache-write
    ones, ``output_tokens`` the reasoning ones.
    """

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced: int = 0
    by_model: dict[str, ModelBlockUsage] = field(default_factory=dict)
    manager: Any = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, record: Any, cost: Decimal | None) -> None:
        """Count one recorded call (``cost``: its price, None when unknown)."""
        with self._lock:
            self.requests += 1
            self.errors += 0 if record.success else 1
            self.input_tokens += record.input_tokens
            self.cached_input_tokens += record.cached_input_tokens
            self.cache_write_tokens += record.cache_write_tokens
            self.output_tokens += record.output_tokens
            self.reasoning_tokens += record.reasoning_tokens
            self.total_tokens += record.total_tokens
            model = self.by_model.get(record.model)
            if model is None:
                model = self.by_model[record.model] = ModelBlockUsage()
            model.requests += 1
            model.total_tokens += record.total_tokens
            if cost is None:
                self.unpriced += 1
                model.unpriced += 1
            else:
                self.cost_usd += cost
                model.cost_usd += cost


_TRACKING: contextvars.ContextVar[tuple[BlockUsage, ...]] = contextvars.ContextVar(
    "quota_hooks_tracking", default=())


def open_blocks() -> tuple[BlockUsage, ...]:
    """The ``track()`` blocks open in this context, outermost first (what the manager adds
    each recorded call to)."""
    return _TRACKING.get()


@contextlib.contextmanager
def counting_into(blocks: tuple[BlockUsage, ...]) -> Iterator[None]:
    """Record into ``blocks`` (captured where a call began) from another context: LiteLLM
    logs a call's success from a worker."""
    token = _TRACKING.set(blocks)
    try:
        yield
    finally:
        _TRACKING.reset(token)


class track(_Block[BlockUsage]):
    """Sum the calls recorded inside the block, whichever adapter saw them, into a
    :class:`BlockUsage` (a new one each time the block is entered); blocks nest (an inner
    block's calls count in the outer one too). One object may be entered in several tasks
    or threads at once: each entry has its own usage.

    Args:
        manager: count only this manager's records (default: every manager's).
    """

    __slots__ = ("_manager",)

    def __init__(self, *, manager: Any = None) -> None:
        self._manager = manager

    def __enter__(self) -> BlockUsage:
        usage = BlockUsage(manager=self._manager)
        _TRACKING.set((*_TRACKING.get(), usage))
        return usage

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        blocks = _TRACKING.get()
        if not blocks:
            raise RuntimeError("track() exited without being entered in this context")
        _TRACKING.set(blocks[:-1])



_F = TypeVar("_F", bound=Callable[..., Any])


def tracked(workspace_id: str | None = None, *, scopes: Mapping[str, str] | None = None,
            manager: Any = None,
            on_usage: Callable[[BlockUsage], Any] | None = None) -> Callable[[_F], _F]:
    """Decorate a sync or async function: each call runs in a :func:`workspace` block (when
    ``workspace_id`` is given) and a :func:`track` block, whose :class:`BlockUsage` is passed
    to ``on_usage`` when the call returns or raises."""
    if workspace_id is not None:
        workspace(workspace_id, scopes=scopes)  # a bad argument is named now, not per call

    def blocks() -> tuple[Any, track]:
        return (workspace(workspace_id, scopes=scopes) if workspace_id is not None
                else contextlib.nullcontext(), track(manager=manager))

    def decorate(fn: _F) -> _F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                place, counter = blocks()
                with place, counter as usage:
                    try:
                        return await fn(*args, **kwargs)
                    finally:
                        if on_usage is not None:
                            on_usage(usage)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            place, counter = blocks()
            with place, counter as usage:
                try:
                    return fn(*args, **kwargs)
                finally:
                    if on_usage is not None:
                        on_usage(usage)

        return run  # type: ignore[return-value]

    return decorate
