"""Track every call of a raw OpenAI client, at the HTTP transport.

::

    from openai import OpenAI
    from quota_hooks.adapters.openai import track_openai

    client = track_openai(OpenAI(), workspace_id="ws-1", manager=manager)

``track_openai`` wraps the transports of the client's own HTTP client (``httpx2`` for
openai 3.x, or a legacy ``httpx`` client passed as ``http_client=``), sync or async, so every
setting of the client (base URL, timeouts, retries, headers, proxies, Azure) is kept. It is a
wrapping transport, not a monkeypatch: it forwards ``close`` and tees the response body as the
caller reads it, never reading more than the caller would.

Each HTTP attempt that reaches the provider becomes one :class:`~quota_hooks.UsageRecord`
(the SDK's own retries included, numbered by ``attempt``). Streamed chat completions get
``stream_options.include_usage`` injected when the caller did not ask for it, and the extra
usage-only chunk is removed from what the caller receives. A stream closed before its usage
arrived is recorded with ``estimated=True``.

Who pays for a call: its own ``x-quota-hooks-workspace`` request header
(``extra_headers={"x-quota-hooks-workspace": "other"}``), else the
:func:`quota_hooks.workspace` block it runs in, else the workspace given to
:func:`track_openai` (carried in ``x-quota-hooks-default-workspace``). The scopes are those of
the block or of ``track_openai``, with the call's own ``x-quota-hooks-scopes`` over them. The
transport strips every ``x-quota-hooks-*`` header before the request leaves the process.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import quote

import anyio

try:
    import openai
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "quota_hooks.adapters.openai needs the OpenAI SDK: pip install 'quota-hooks[openai]'"
    ) from exc

from .._flow import Flow, arun, run
from ..compat import get_default_manager
from ..context import current_workspace
from ..errors import ConfigurationError, QuotaHooksError
from ..manager import QuotaManager
from ..usage import UsageRecord
from ._openai_call import (
    DEFAULT_SCOPES_HEADER,
    DEFAULT_WORKSPACE_HEADER,
    OUR_HEADERS,
    SCOPES_HEADER,
    WORKSPACE_HEADER,
    OpenAICall,
    RunMemory,
    api_method_for,
)
from ._usage import usage_fields

__all__ = [
    "SCOPES_HEADER",
    "WORKSPACE_HEADER",
    "api_method_for",
    "get_enhanced_async_openai_client",
    "get_enhanced_openai_client",
    "track_openai",
    "usage_fields",
]

logger = logging.getLogger("quota_hooks")

_LIMITS_EVERY = 1.0  # seconds between two reads of a workspace's x-ratelimit-* headers
_LIMITS_MEMORY = 10_000
_LIMIT_HEADERS = tuple(
    f"x-ratelimit-{kind}-{what}"
    for kind in ("limit", "remaining", "reset") for what in ("requests", "tokens")
)

ClientT = TypeVar("ClientT", bound="openai.OpenAI | openai.AsyncOpenAI")
_T = TypeVar("_T")


# ---------------------------------------------------------------------------------- the hub
class _Hub:
    """What every transport of one HTTP client shares: the manager, the client's HTTP library
    (``httpx2`` or ``httpx``: the requests, responses and streams it makes are of that one),
    and what is remembered across calls (providers by host, runs counted, when rate-limit
    headers were read)."""

    def __init__(self, manager: QuotaManager, inject_stream_usage: bool, lib: ModuleType) -> None:
        self.manager = manager
        self.inject_stream_usage = inject_stream_usage
        self.lib = lib
        self.tees = _tees(lib)
        self.memory = RunMemory()
        self._providers: dict[tuple[str, str, int | None], str] = {}
        self._limits_read: dict[tuple[str, str], float] = {}

    def provider_of(self, url: Any) -> str:
        """The provider a request goes to, from its URL, once per host: genai-prices' id
        when it knows the API (``groq``, ``azure``, ``openrouter``, ``deepseek`` ...),
        else ``openai-compatible`` (a model server of your own)."""
        key = (url.scheme, url.host, url.port)
        found = self._providers.get(key)
        if found is None:
            found = self.manager.prices.provider_for_url(str(url)) or (
                "openai" if (url.host or "").endswith("openai.com") else "openai-compatible")
            if len(self._providers) < 256:
                self._providers[key] = found
        return found

    def failed(self, stage: str, exc: BaseException, workspace_id: str | None) -> None:
        self.manager.note_tracking_failure(f"openai:{stage}", exc, workspace_id)

    def begin(self, request: Any) -> tuple[OpenAICall | None, Any]:
        """Begin tracking ``request``: its call (None when reading it failed) and the
        request to send (another one when ``include_usage`` was injected), without our
        headers. Never raises."""
        headers = request.headers
        call: OpenAICall | None = None
        ours: dict[str, str] = {}
        try:
            ours = _our_headers(headers)
            url = request.url
            call = OpenAICall(
                verb=request.method, path=url.path, provider=self.provider_of(url),
                server=url.host if url.port is None else f"{url.host}:{url.port}",
                headers=ours, context=current_workspace(), memory=self.memory,
                estimator=self.manager.estimate, failed=self.failed)
        except Exception as exc:  # a bug of ours: the call goes on, untracked
            self.failed("request", exc, ours.get(WORKSPACE_HEADER))
            call = None
        if call is not None:
            try:
                request = _read_request(call, request, self.inject_stream_usage, self.lib)
            except Exception as exc:  # its body unread: still reserved and recorded
                call.inject = False
                self.failed("request", exc, call.workspace_id)
        for header in OUR_HEADERS:
            if (header in ours if call is not None else header in request.headers):
                del request.headers[header]
        return call, request

    def note_limits(self, call: OpenAICall, headers: Mapping[str, str]) -> None:
        """Hand the provider's ``x-ratelimit-*`` headers to the manager: at most once a
        second per workspace and provider (the status shows them; a second is fresh
        enough), and always on a 429. Never raises."""
        try:
            if ("x-ratelimit-remaining-requests" not in headers
                    and "x-ratelimit-remaining-tokens" not in headers):
                return  # the usual case for compatible servers: no scan of every header
            if call.status != 429:  # a 429's are always read, and start no second
                key, now = (call.workspace_id, call.provider), time.monotonic()
                last = self._limits_read.get(key)
                if last is not None and now - last < _LIMITS_EVERY:
                    return
                if len(self._limits_read) >= _LIMITS_MEMORY:
                    self._limits_read.clear()
                self._limits_read[key] = now
            limits = {name: headers[name] for name in _LIMIT_HEADERS if name in headers}
            if limits:
                self.manager.note_provider_limits(call.workspace_id, call.provider, limits)
        except Exception as exc:
            self.failed("limits", exc, call.workspace_id)

    def final_record(self, call: OpenAICall) -> UsageRecord | None:
        """The attempt's record (None once recorded). Never raises: if reading what the
        provider sent fails, the attempt is recorded at its estimate, so a bug of ours never
        lets a call through uncounted."""
        now = self.manager.now()
        try:
            return call.record(now)
        except Exception as exc:
            self.failed("record", exc, call.workspace_id)
            call.unreadable = True
            try:
                return call.fallback_record(now)
            except Exception as again:
                self.failed("record", again, call.workspace_id)
                return None


def _our_headers(headers: Any) -> dict[str, str]:
    """Our ``x-quota-hooks-*`` headers and the SDK's retry count, lowercased, in one pass
    over the raw headers (each lookup in an httpx ``Headers`` scans them all); a header sent
    twice is joined with ``", "``, as ``Headers.get`` joins it."""
    found: dict[str, str] = {}
    encoding = headers.encoding
    for key, value in headers.raw:
        if len(key) > 13 and key[:2] in (b"x-", b"X-"):
            name = key.lower()
            if name.startswith(b"x-quota-hooks-") or name == b"x-stainless-retry-count":
                text, shown = name.decode(encoding), value.decode(encoding)
                found[text] = f"{found[text]}, {shown}" if text in found else shown
    return found


def _read_request(call: OpenAICall, request: Any, inject: bool, lib: ModuleType) -> Any:
    """Let ``call`` read the request's body; the request to send (a new one, of the same
    HTTP library, when ``include_usage`` was injected)."""
    stream = request.stream
    fields = getattr(stream, "fields", None)
    if fields is not None:  # multipart (audio, image edits): never read the files
        try:
            size = int(request.headers.get("content-length") or 0)
        except ValueError:
            size = 0
        call.read_form(((item.name, str(item.value)) for item in fields
                        if type(item).__name__ == "DataField"), size)
        return request
    if not request.headers.get("content-type", "").startswith("application/json"):
        return request
    try:
        content = request.content
    except Exception:  # a streaming body the caller has not read: leave it alone
        return request
    new_content = call.read_json(content, inject_stream_usage=inject)
    if new_content is None:
        return request
    headers = lib.Headers(request.headers)
    headers["content-length"] = str(len(new_content))
    # The usage chunk is removed from the bytes the caller sees, which needs them plain.
    headers["accept-encoding"] = "identity"
    return lib.Request(request.method, request.url, headers=headers, content=new_content,
                       extensions=request.extensions)


def _on_response(hub: _Hub, call: OpenAICall, response: Any) -> tuple[Any, bool]:
    """Begin reading ``response``: the response the caller gets, and whether its body is
    known whole already (an inner transport read it: the call can be finished now).

    The body is read through the HTTP library's own content decoder (gzip, deflate, br,
    zstd: whatever the library can decode) while the caller gets the bytes of the wire
    unchanged. When the injected usage chunk must be cut from an event stream that came
    compressed, the caller gets the decoded stream instead, without its
    ``Content-Encoding``: the client reads it exactly as it would have read the compressed
    one.
    """
    headers = response.headers
    filtering = call.respond(response.status_code, headers)
    if hasattr(response, "_content"):  # an inner transport read (and decoded) it already
        content = response.content
        shown = call.take_whole(content)
        if filtering and shown != content:  # decoded and cut: no encoding, another length
            kept = headers.copy()
            for name in ("content-length", "content-encoding"):
                if name in kept:
                    del kept[name]
            response = hub.lib.Response(response.status_code, headers=kept, content=shown,
                                        extensions=response.extensions)
        return response, True
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity":
        call.decode_with(_Decoder(hub.lib, headers))
    if filtering:  # the caller gets our (plain, filtered) bytes: other length, no encoding
        if "content-length" in headers:
            del headers["content-length"]
        if "content-encoding" in headers and encoding and encoding != "identity":
            del headers["content-encoding"]
    return response, False


class _Decoder:
    """The content decoder the HTTP library itself picks for a response's
    ``Content-Encoding`` (every coding it supports, in order; unknown ones left as they
    are, as the client does), bytes in and bytes out: httpx's decoders return bytes,
    httpx2's return iterators of bytes."""

    __slots__ = ("_inner",)

    def __init__(self, lib: ModuleType, headers: Any) -> None:
        # A detached response: the caller's own response keeps its own, fresh decoder.
        self._inner = lib.Response(200, headers=headers)._get_content_decoder()

    def decode(self, data: bytes) -> bytes:
        return _joined(self._inner.decode(data))

    def flush(self) -> bytes:
        return _joined(self._inner.flush())


def _joined(out: bytes | Iterable[bytes]) -> bytes:
    return out if isinstance(out, bytes) else b"".join(out)


# ---------------------------------------------------------------------------------- flows
#: One manager call a flow asks its transport to make: the method's name (``"acquire"``; the
#: async transport awaits ``aacquire``), its arguments and keyword arguments.
_Step = tuple[str, tuple[Any, ...], dict[str, Any]]
#: What a transport does around one attempt, written once for sync and async: a generator
#: that yields the manager calls to make and is sent their results (or thrown their errors).
_Flow = Flow[_Step, _T]


def _admit(hub: _Hub, call: OpenAICall) -> _Flow[None]:
    """Before the request is sent: take an outer run's reservation, or reserve the call's
    own estimate. A refusal (a QuotaHooksError) stops the call, a bug of ours never does."""
    call.reservation, outgrown = call.claim_outer()
    if outgrown is not None:
        yield "release", (outgrown,), {}
    if call.reservation is None:
        try:
            call.reservation = yield "acquire", (call.workspace_id, call.facts()), {
                "scopes": call.scopes}
        except QuotaHooksError:
            raise
        except Exception as exc:
            hub.failed("acquire", exc, call.workspace_id)


def _respond(hub: _Hub, call: OpenAICall, response: Any, finish: _Finisher) -> _Flow[Any]:
    """The response arrived: the one the caller gets, its body teed to ``call`` (or read
    whole already: the attempt is recorded now)."""
    try:
        response, whole = _on_response(hub, call, response)
        if whole:
            yield from _finish(hub, call, response.headers)
        else:
            sync, tee = hub.tees
            response.stream = (tee(response.stream, call, finish, response.headers)
                               if isinstance(finish, AsyncTrackingTransport)
                               else sync(response.stream, call, finish, response.headers))
    except Exception as exc:
        hub.failed("response", exc, call.workspace_id)
        call.unreadable = True
        yield from _finish(hub, call, None)  # settles at the estimate, never uncounted
    return response


#: Errors of an HTTP library (httpx, httpx2) raised before any byte of the request left: the
#: provider never saw it. Any other error on the way (a read timeout, a reset, a
#: cancellation) may come after the provider took the request.
_NOT_SENT = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "ProxyError",
                       "UnsupportedProtocol", "LocalProtocolError", "InvalidURL"})


def _unanswered(hub: _Hub, call: OpenAICall, error: BaseException) -> _Flow[None]:
    """The request failed before its response. Never sent (a connect error): its
    reservation is given back. Otherwise the attempt counts as a request, at its estimate:
    the SDK retries a timeout, and each retry may have run at the provider."""
    if any(kind.__name__ in _NOT_SENT for kind in type(error).__mro__):
        yield "release", (call.reservation,), {}
        return
    try:
        record = call.unanswered_record(error, hub.manager.now())
    except Exception as exc:  # a bug of ours: the reservation still holds the estimate
        hub.failed("record", exc, call.workspace_id)
        return
    yield from _settle(call, record)


def _finish(hub: _Hub, call: OpenAICall, headers: Mapping[str, str] | None) -> _Flow[None]:
    """Record the attempt (or release its reservation, when it was recorded already)."""
    if (yield from _settle(call, hub.final_record(call))) and headers is not None:
        hub.note_limits(call, headers)


def _settle(call: OpenAICall, record: UsageRecord | None) -> _Flow[bool]:
    """Record the attempt's ``record`` against its reservation (True), or give the
    reservation back when there is no record (it was recorded already)."""
    if record is None:
        yield "release", (call.reservation,), {}
        return False
    if call.mark is not None:
        call.mark.recorded = True  # the outer run is recorded here: it adds nothing
    yield "record", (record, call.reservation), {}
    return True


def _run(manager: QuotaManager, flow: _Flow[_T]) -> _T:
    """Carry out ``flow`` with the manager's sync methods."""
    return run(flow, lambda step: getattr(manager, step[0])(*step[1], **step[2]))


async def _arun(manager: QuotaManager, flow: _Flow[_T]) -> _T:
    """Carry out ``flow`` with the manager's async methods (``aacquire`` for ``acquire``)."""
    return await arun(flow, lambda step: getattr(manager, "a" + step[0])(*step[1], **step[2]))


# ---------------------------------------------------------------------------------- transports
class TrackingTransport:
    """Wraps the next sync transport of an HTTP client; tracks each request through it."""

    def __init__(self, inner: Any, hub: _Hub) -> None:
        self.inner = inner
        self.hub = hub

    def handle_request(self, request: Any) -> Any:
        hub = self.hub
        call, request = hub.begin(request)
        if call is None:
            return self.inner.handle_request(request)
        _run(hub.manager, _admit(hub, call))
        try:
            response = self.inner.handle_request(request)
        except BaseException as exc:
            _run(hub.manager, _unanswered(hub, call, exc))
            raise
        return _run(hub.manager, _respond(hub, call, response, self))

    def finish(self, call: OpenAICall, headers: Mapping[str, str] | None) -> None:
        """The body of ``call``'s response was closed: record the attempt."""
        _run(self.hub.manager, _finish(self.hub, call, headers))

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> TrackingTransport:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.inner.__exit__(*exc_info)


class AsyncTrackingTransport:
    """The async twin of :class:`TrackingTransport`."""

    def __init__(self, inner: Any, hub: _Hub) -> None:
        self.inner = inner
        self.hub = hub

    async def handle_async_request(self, request: Any) -> Any:
        hub = self.hub
        call, request = hub.begin(request)
        if call is None:
            return await self.inner.handle_async_request(request)
        await _arun(hub.manager, _admit(hub, call))
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):  # a cancelled call is still counted
                await _arun(hub.manager, _unanswered(hub, call, exc))
            raise
        return await _arun(hub.manager, _respond(hub, call, response, self))

    async def finish(self, call: OpenAICall, headers: Mapping[str, str] | None) -> None:
        """The body of ``call``'s response was closed: record the attempt."""
        await _arun(self.hub.manager, _finish(self.hub, call, headers))

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> AsyncTrackingTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.inner.__aexit__(*exc_info)


_Finisher = TrackingTransport | AsyncTrackingTransport


class _SyncTee:
    """A response body on its way to the caller, read by its call as it goes; the call is
    finished when the caller closes the body (read to its end or not)."""

    def __init__(self, inner: Any, call: OpenAICall, transport: TrackingTransport,
                 headers: Mapping[str, str]) -> None:
        self._inner, self._call, self._transport, self._headers = inner, call, transport, headers

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        for chunk in self._inner:
            out = call.feed(chunk)
            if out:
                yield out
        tail = call.end()
        if tail:
            yield tail

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._transport.finish(self._call, self._headers)


class _AsyncTee:
    """The async twin of :class:`_SyncTee`."""

    def __init__(self, inner: Any, call: OpenAICall, transport: AsyncTrackingTransport,
                 headers: Mapping[str, str]) -> None:
        self._inner, self._call, self._transport, self._headers = inner, call, transport, headers

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call = self._call
        async for chunk in self._inner:
            out = call.feed(chunk)
            if out:
                yield out
        tail = call.end()
        if tail:
            yield tail

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._transport.finish(self._call, self._headers)


# A response's stream must be an instance of its own library's SyncByteStream or
# AsyncByteStream (httpx and httpx2 check), so each library gets a subclass of the tees that
# adds its base class, and nothing else.
_STREAMS: dict[str, tuple[type[_SyncTee], type[_AsyncTee]]] = {}
_STREAMS_LOCK = threading.Lock()


def _tees(lib: ModuleType) -> tuple[type[_SyncTee], type[_AsyncTee]]:
    """The tee classes for an HTTP library (``httpx2`` or ``httpx``)."""
    found = _STREAMS.get(lib.__name__)
    if found is None:
        with _STREAMS_LOCK:
            found = _STREAMS.setdefault(lib.__name__, (
                type("SyncTee", (_SyncTee, lib.SyncByteStream), {}),
                type("AsyncTee", (_AsyncTee, lib.AsyncByteStream), {}),
            ))
    return found


# ---------------------------------------------------------------------------------- public API
def _wrap_http_client(http_client: Any, manager: QuotaManager, inject: bool) -> None:
    """Wrap every transport of ``http_client`` (its default and its mounts) once."""
    lib = _library_of(http_client)
    wrapper: type[TrackingTransport | AsyncTrackingTransport] = (
        AsyncTrackingTransport if isinstance(http_client, lib.AsyncClient) else TrackingTransport)
    current: Any = http_client._transport
    if isinstance(current, wrapper):
        if current.hub.manager is not manager:
            raise ConfigurationError(
                "this OpenAI client's http_client is already tracked by another QuotaManager; "
                "give each OpenAI client its own http_client"
            )
        return
    hub = _Hub(manager, inject, lib)
    http_client._transport = wrapper(current, hub)
    http_client._mounts = {
        pattern: (None if transport is None else wrapper(transport, hub))
        for pattern, transport in http_client._mounts.items()
    }


def _library_of(http_client: Any) -> ModuleType:
    """The HTTP library (``httpx2`` or the legacy ``httpx``) that ``http_client`` belongs to."""
    for name in ("httpx2", "httpx"):
        lib = sys.modules.get(name)
        if lib is not None and isinstance(http_client, (lib.Client, lib.AsyncClient)):
            return lib
    raise ConfigurationError(
        f"cannot track an http_client of type {type(http_client).__name__}: "
        "expected an httpx2 or httpx Client or AsyncClient"
    )


def track_openai(
    client: ClientT,
    *,
    workspace_id: str = "default",
    manager: QuotaManager | None = None,
    scopes: Mapping[str, str] | None = None,
    inject_stream_usage: bool = True,
) -> ClientT:
    """Track every call of ``client`` (``OpenAI``, ``AsyncOpenAI``, ``AzureOpenAI`` ...).

    Returns a client (a copy sharing the original's HTTP client and settings) whose calls are
    charged to ``workspace_id`` and ``scopes`` (e.g. ``{"team": "ml", "user": "u-1"}``),
    unless a call names its own (``extra_headers={"x-quota-hooks-workspace": "other"}``) or
    runs inside a :func:`quota_hooks.workspace` block, which win in that order.

    Args:
        client: an OpenAI SDK client, sync or async.
        workspace_id: the workspace charged for the calls that name none themselves and run
            in no :func:`quota_hooks.workspace` block.
        manager: the :class:`QuotaManager`; the process-wide default when omitted.
        scopes: extra scopes charged for each call.
        inject_stream_usage: ask streamed chat completions for their usage when the caller did
            not (the extra chunk is removed from what the caller receives).
    """
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise ConfigurationError(
            f"track_openai() needs an openai.OpenAI or AsyncOpenAI client, got "
            f"{type(client).__name__}"
        )
    if not isinstance(workspace_id, str) or not workspace_id:
        raise ConfigurationError(f"workspace_id must be a non-empty string, got {workspace_id!r}")
    manager = manager if manager is not None else get_default_manager()
    _wrap_http_client(client._client, manager, inject_stream_usage)
    headers = {DEFAULT_WORKSPACE_HEADER: quote(workspace_id, safe="")}
    if scopes:
        headers[DEFAULT_SCOPES_HEADER] = ";".join(
            f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in scopes.items()
        )
    return client.with_options(default_headers=headers)  # type: ignore[return-value]


def get_enhanced_openai_client(
    workspace_id: str = "default", *, manager: QuotaManager | None = None, **kwargs: Any
) -> openai.OpenAI:
    """The seed guide's factory: an ``OpenAI(**kwargs)`` client tracked for ``workspace_id``."""
    return track_openai(openai.OpenAI(**kwargs), workspace_id=workspace_id, manager=manager)


def get_enhanced_async_openai_client(
    workspace_id: str = "default", *, manager: QuotaManager | None = None, **kwargs: Any
) -> openai.AsyncOpenAI:
    """The seed guide's async factory: an ``AsyncOpenAI(**kwargs)`` client tracked for
    ``workspace_id``."""
    return track_openai(openai.AsyncOpenAI(**kwargs), workspace_id=workspace_id, manager=manager)
