"""Record every LiteLLM call through its callback API.

::

    import litellm
    from quota_hooks.adapters.litellm import QuotaLogger

    litellm.callbacks = [QuotaLogger(manager=manager, default_workspace="ws-1")]
    litellm.completion(model="gpt-4o-mini", messages=..., metadata={"workspace_id": "ws-1"})

or the plain function form::

    logger = QuotaLogger(manager=manager)
    litellm.success_callback = [logger.success_callback, logger.async_success_callback]
    litellm.failure_callback = [logger.failure_callback]

(litellm calls a sync function for sync calls only and an async one for async calls only:
both halves are needed).

The workspace comes from ``metadata["workspace_id"]``, then the :func:`quota_hooks.workspace`
block the call was made in, then ``default_workspace``, then ``"default"``. ``user=`` and
tags of the form ``"kind:value"`` (``metadata["tags"]``) become scopes, over the block's.
litellm logs a call's success from a worker, so a logger remembers each call's block (and its
``quota_hooks.track()`` blocks) from the call's pre-call hook: that needs the logger in
``litellm.callbacks``. The plain-function form (``success_callback=[logger.success_callback]``)
sees no pre-call hook, so its calls are charged to ``metadata`` or ``default_workspace``
only. Tokens come from the response's usage (cached and reasoning tokens included). The cost
is the price book's, by ``custom_llm_provider`` and model, as for a call any other adapter saw;
litellm's own ``response_cost`` is kept as ``reported_cost`` (``cost_source="litellm"`` counts
litellm's instead).

**Sync calls are limited only through** :func:`guarded`: litellm has no hook that can refuse a
sync ``litellm.completion`` (it swallows what its pre-call hook raises; read
``litellm_logging.py``'s ``Logging.pre_call``). Async calls are refused before they are sent,
in ``async_pre_call_deployment_hook``. An unguarded sync call is still reserved, counted and
recorded, and one that a limit would have refused is counted in ``QuotaLogger.unrefused``
and logged once.

LiteLLM runs these callbacks after the call returns, in a background thread (sync calls) or a
logging worker task (async calls). ``manager.drain()`` / ``await manager.adrain()`` wait until
they have been recorded.

Set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` before importing litellm to keep ``import litellm`` off
the network (it otherwise fetches its price map).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

try:
    import litellm
    from litellm.exceptions import RateLimitError
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "quota_hooks.adapters.litellm needs litellm: pip install 'quota-hooks[litellm]'"
    ) from exc

from ..compat import get_default_manager
from ..context import WorkspaceContext, counting_into, current_workspace, open_blocks
from ..errors import ConfigurationError, QuotaHooksError
from ..manager import QuotaManager
from ..storage.base import Reservation
from ..usage import Estimate, UsageRecord, reported_usage
from ._usage import as_mapping, usage_fields

__all__ = ["CALL_TYPES", "QuotaLogger", "guarded"]

#: litellm ``call_type`` -> our ``api_method``. Anything else keeps its call_type.
CALL_TYPES: Mapping[str, str] = {
    "completion": "chat.completions",
    "acompletion": "chat.completions",
    "embedding": "embeddings",
    "aembedding": "embeddings",
    "image_generation": "images.generate",
    "aimage_generation": "images.generate",
    "transcription": "audio.transcriptions",
    "atranscription": "audio.transcriptions",
    "speech": "audio.speech",
    "aspeech": "audio.speech",
    "responses": "responses",
    "aresponses": "responses",
    "text_completion": "completions",
    "atext_completion": "completions",
}
_SEEN_FAILURES = 10_000
#: Calls begun and not yet logged whose ``workspace()`` and ``track()`` blocks a logger
#: remembers (a success forgets its call's; past this, the oldest are forgotten).
_OPEN_CALLS = 100_000
_ASYNC_CALL_TYPES = frozenset(name for name in CALL_TYPES if name.startswith("a")
                              and name[1:] in CALL_TYPES)
_log = logging.getLogger("quota_hooks")
_F = TypeVar("_F", bound=Callable[..., Any])
_PICO = Decimal("1e-12")


class QuotaLogger(CustomLogger):
    """A litellm callback that records each call in a :class:`QuotaManager`.

    Args:
        manager: where calls are recorded; the process-wide default when omitted.
        default_workspace: the workspace of calls whose metadata names none.
        workspace_key: the metadata key that names the workspace.
        cost_source: ``"book"`` (default): the call is priced by the manager's price book,
            like a call any other adapter saw, and litellm's ``response_cost`` is kept on the
            record as ``reported_cost`` (a warning, once per model, when they differ by more
            than 1 %); ``"litellm"``: litellm's ``response_cost`` is the cost (for prices
            customised in litellm).
    """

    def __init__(
        self,
        manager: QuotaManager | None = None,
        default_workspace: str | None = None,
        *,
        workspace_key: str = "workspace_id",
        cost_source: Literal["book", "litellm"] = "book",
    ) -> None:
        if cost_source not in ("book", "litellm"):
            raise ConfigurationError(
                f"cost_source must be 'book' or 'litellm', got {cost_source!r}")
        super().__init__()
        self.cost_source = cost_source
        self.manager = manager if manager is not None else get_default_manager()
        self.default_workspace = default_workspace or "default"
        self.workspace_key = workspace_key
        self._failures: OrderedDict[str, None] = OrderedDict()
        self._contexts: OrderedDict[str, WorkspaceContext | None] = OrderedDict()
        self._tracking: dict[str, tuple[Any, ...]] = {}
        self._reservations: dict[str, Reservation] = {}
        self._lock = threading.Lock()
        self._plain_checked = False
        self.unrefused = 0
        """Sync calls that a limit would have refused but litellm gave no way to stop (see
        :meth:`log_pre_api_call`); use :func:`guarded` for those."""
        self.manager.add_drainer(self)

    # ------------------------------------------------------------------ enforcement
    def log_pre_api_call(self, model: Any, messages: Any, kwargs: dict[str, Any]) -> None:
        """litellm calls this before every attempt of every call, in the caller's thread, but
        swallows whatever it raises: it cannot refuse a sync call. So a sync call that
        :func:`guarded` did not reserve is reserved here, so that the limits every other call
        checks include it, and when a limit would have refused it, that is counted in
        :attr:`unrefused` and logged once: wrap sync calls with ``guarded()`` to enforce."""
        call_type = str(kwargs.get("call_type") or "completion")
        call_id = str(kwargs.get("litellm_call_id") or "")
        if call_type in _ASYNC_CALL_TYPES or not call_id or call_id in self._reservations:
            return  # async calls reserve in async_pre_call_deployment_hook
        try:
            workspace, scopes, estimate = self._estimate(kwargs, call_type)
            reservation = self.manager.acquire(workspace, estimate, scopes=scopes, wait=False)
        except QuotaHooksError as exc:
            self.unrefused += 1
            if self.unrefused == 1:
                _log.warning(
                    "quota-hooks: a sync litellm.%s call went past a limit (%s): litellm has no "
                    "hook that can refuse a sync call. Wrap sync calls with "
                    "quota_hooks.adapters.litellm.guarded() to enforce limits.", call_type, exc)
            return
        except Exception as exc:
            self.manager.note_tracking_failure("litellm:acquire", exc)
            return
        if reservation is not None:
            with self._lock:
                self._reservations[call_id] = reservation

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        """litellm calls this before every async SDK call (and the proxy's): reserve the
        call's estimate; a refusal raises QuotaExceededError and the call is never sent."""
        call_id = str(kwargs.get("litellm_call_id") or "")
        if not call_id or call_id in self._reservations:
            return None  # reserved already (by guarded())
        workspace, scopes, estimate = self._estimate(kwargs, call_type)
        try:
            reservation = await self.manager.aacquire(workspace, estimate, scopes=scopes)
        except QuotaHooksError:
            raise
        except Exception as exc:  # a bug of ours never stops the call
            self.manager.note_tracking_failure("litellm:acquire", exc, workspace)
            return None
        if reservation is not None:
            with self._lock:
                self._reservations[call_id] = reservation
        return None

    def reserve(self, kwargs: dict[str, Any], call_type: str = "completion") -> None:
        """Sync reservation for :func:`guarded`: ``kwargs`` must carry ``litellm_call_id``."""
        workspace, scopes, estimate = self._estimate(kwargs, call_type)
        try:
            reservation = self.manager.acquire(workspace, estimate, scopes=scopes)
        except QuotaHooksError:
            raise
        except Exception as exc:
            self.manager.note_tracking_failure("litellm:acquire", exc, workspace)
            return
        if reservation is not None:
            with self._lock:
                self._reservations[str(kwargs["litellm_call_id"])] = reservation

    def _take(self, kwargs: Mapping[str, Any]) -> Reservation | None:
        call_id = kwargs.get("litellm_call_id")
        if not call_id:
            return None
        with self._lock:
            return self._reservations.pop(str(call_id), None)

    def _estimate(
        self, kwargs: Mapping[str, Any], call_type: Any
    ) -> tuple[str, dict[str, str], Estimate]:
        metadata = kwargs.get("metadata") or _metadata(kwargs)
        workspace, scopes = self._who(kwargs, metadata, [str(t) for t in (
            metadata.get("tags") or [])] if isinstance(metadata, Mapping) else [],
            kwargs.get("user"))
        return workspace, scopes, self._facts(kwargs, call_type)

    @staticmethod
    def _facts(kwargs: Mapping[str, Any], call_type: Any) -> Estimate:
        """The facts of a request the manager estimates it from."""
        kind = getattr(call_type, "value", call_type)
        method = CALL_TYPES.get(str(kind or "completion"), str(kind or "completion"))
        prompt = kwargs.get("messages") or kwargs.get("input") or kwargs.get("prompt") or ""
        text = prompt if isinstance(prompt, str) else json.dumps(prompt, default=str)
        found = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens") or (
            kwargs.get("max_output_tokens"))
        # The manager works out the tokens (its token estimator, the policy's
        # default_max_tokens for a method that generates text).
        return Estimate(model=str(kwargs.get("model") or "unknown"), api_method=method,
                        prompt_size=len(text),
                        max_tokens=found if type(found) is int and found >= 0 else None)

    def _who(self, kwargs: Mapping[str, Any], metadata: Any, tags: list[str],
             user: Any) -> tuple[str, dict[str, str]]:
        """Who pays for a call: its metadata's workspace, then the ``workspace()`` block it
        was made in (remembered per call when the call began: litellm logs success from
        another thread), then ``default_workspace``; and its scopes."""
        workspace = metadata.get(self.workspace_key) if isinstance(metadata, Mapping) else None
        scopes = self._scopes(tags, user)
        call_id = str(kwargs.get("litellm_call_id") or "")
        # The first sight of a call decides (its pre-call hook, in the caller's context): the
        # success log runs elsewhere, in a worker whose own context says nothing of the call.
        with self._lock:
            if call_id in self._contexts:
                context = self._contexts[call_id]
            else:
                context = current_workspace()
                if call_id:
                    self._contexts[call_id] = context
                    self._tracking[call_id] = open_blocks()
                    if len(self._contexts) > _OPEN_CALLS:
                        self._tracking.pop(self._contexts.popitem(last=False)[0], None)
        if isinstance(workspace, str) and workspace:
            return workspace, scopes
        if context is None:
            return self.default_workspace, scopes
        return context.workspace_id, {**context.scopes, **scopes}  # the call's own win

    @staticmethod
    def _scopes(tags: list[str], user: Any) -> dict[str, str]:
        scopes = {}
        for tag in tags:
            kind, sep, value = tag.partition(":")
            if sep and kind and value:
                scopes[kind] = value
        if user:
            scopes["user"] = str(user)
        return scopes

    # ------------------------------------------------------------------ litellm hooks
    def log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        record = self._safe(kwargs, response_obj, start_time, end_time, True)
        self._settle(record, kwargs)

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        record = self._safe(kwargs, response_obj, start_time, end_time, True)
        await self._asettle(record, kwargs)

    def log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        record = self._safe(kwargs, response_obj, start_time, end_time, False)
        self._settle(record, kwargs)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        record = self._safe(kwargs, response_obj, start_time, end_time, False)
        await self._asettle(record, kwargs)

    def _settle(self, record: UsageRecord | None, kwargs: Mapping[str, Any]) -> None:
        reservation = self._take(kwargs)
        if record is not None:
            with counting_into(self._blocks_of(kwargs, done=record.success)):
                self.manager.record(record, reservation)
        else:
            self.manager.release(reservation)

    async def _asettle(self, record: UsageRecord | None, kwargs: Mapping[str, Any]) -> None:
        reservation = self._take(kwargs)
        if record is not None:
            with counting_into(self._blocks_of(kwargs, done=record.success)):
                await self.manager.arecord(record, reservation)
        else:
            await self.manager.arelease(reservation)

    def _blocks_of(self, kwargs: Mapping[str, Any], *, done: bool) -> tuple[Any, ...]:
        """The ``track()`` blocks open where the call began (litellm logs it elsewhere).
        ``done`` (a success): the call's remembered block and blocks are forgotten (a
        failure may be followed by a retry's or a fallback's success)."""
        call_id = str(kwargs.get("litellm_call_id") or "")
        if not call_id:
            return ()
        with self._lock:
            if done:
                self._contexts.pop(call_id, None)
                return self._tracking.pop(call_id, ())
            return self._tracking.get(call_id, ())

    # The plain function form: litellm.success_callback / failure_callback. litellm calls a
    # plain sync function in success_callback for sync calls only, and an async one for async
    # calls only (acompletion, aembedding...); a sync function in failure_callback for both.
    def success_callback(
        self, kwargs: dict[str, Any], completion_response: Any, start_time: Any, end_time: Any
    ) -> None:
        """For ``litellm.success_callback = [logger.success_callback,
        logger.async_success_callback]``: the sync calls. litellm calls it for every chunk
        of a stream too: only the stream's end (``complete_streaming_response``) is a call."""
        self._check_plain_form()
        if _stream_done(kwargs):
            self.log_success_event(kwargs, completion_response, start_time, end_time)

    async def async_success_callback(
        self, kwargs: dict[str, Any], completion_response: Any, start_time: Any, end_time: Any
    ) -> None:
        """The async calls' half of :meth:`success_callback` (``acompletion``,
        ``aembedding``...): litellm never calls a sync function for them."""
        self._check_plain_form()
        if _stream_done(kwargs):
            await self.async_log_success_event(kwargs, completion_response, start_time,
                                               end_time)

    def failure_callback(
        self, kwargs: dict[str, Any], completion_response: Any, start_time: Any, end_time: Any
    ) -> None:
        """For ``litellm.failure_callback = [logger.failure_callback]`` (sync and async
        calls both)."""
        self._check_plain_form()
        self.log_failure_event(kwargs, completion_response, start_time, end_time)

    def _check_plain_form(self) -> None:
        """Warn once when only one half of the success callbacks is registered: the other
        kind of call (sync or async) would go uncounted."""
        if self._plain_checked:
            return
        self._plain_checked = True
        # litellm's lists (one of them private): a check must never stop the record after it
        registered = [*(getattr(litellm, "success_callback", None) or ()),
                      *(getattr(litellm, "_async_success_callback", None) or ())]
        missing = [name for name in ("success_callback", "async_success_callback")
                   if getattr(self, name) not in registered]
        if missing and len(missing) < 2:
            _log.warning(
                "quota-hooks: litellm.success_callback holds only one of "
                "QuotaLogger.success_callback and async_success_callback: %s calls are not "
                "counted; register both", "async" if missing == ["async_success_callback"]
                else "sync")

    # ------------------------------------------------------------------ draining
    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until litellm's background logging threads are idle. False on timeout."""
        deadline = time.monotonic() + timeout
        while _sync_backlog() > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    async def adrain(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - mirrors drain()
        """Wait until litellm's logging worker and threads have run every callback."""
        worker = _logging_worker()
        if worker is not None:
            try:
                await asyncio.wait_for(worker.flush(), timeout)
            except TimeoutError:
                return False
        deadline = time.monotonic() + timeout
        while _sync_backlog() > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    # ------------------------------------------------------------------ mapping
    def _safe(
        self, kwargs: dict[str, Any], response: Any, start: Any, end: Any, success: bool
    ) -> UsageRecord | None:
        try:
            return self.to_record(kwargs, response, start, end, success)
        except Exception as exc:  # litellm would only log and drop it: count it instead
            workspace = _metadata(kwargs).get(self.workspace_key)
            self.manager.note_tracking_failure(
                "litellm:callback", exc, workspace if isinstance(workspace, str) else None
            )
            return None

    def to_record(
        self, kwargs: Mapping[str, Any], response: Any, start: Any, end: Any, success: bool
    ) -> UsageRecord | None:
        """The record of one litellm call (None for a failure already recorded)."""
        slo: Mapping[str, Any] = kwargs.get("standard_logging_object") or {}
        metadata = _metadata(kwargs)
        if not success and isinstance(kwargs.get("exception"), QuotaHooksError):
            return None  # refused by us before it was sent: not a provider call
        call_id = kwargs.get("litellm_call_id") or slo.get("litellm_call_id")
        if not success and call_id and not self._first_failure(str(call_id)):
            return None
        tags = [str(t) for t in (slo.get("request_tags") or metadata.get("tags") or [])]
        workspace, scopes = self._who(kwargs, metadata, tags,
                                      kwargs.get("user") or slo.get("end_user"))

        call_type = str(slo.get("call_type") or kwargs.get("call_type") or "completion")
        method = CALL_TYPES.get(call_type, call_type)
        fields: dict[str, Any] = {}
        if success:
            usage = as_mapping(getattr(response, "usage", None))
            if usage:
                reported: dict[str, Any] | None = usage_fields(usage)
            elif slo.get("prompt_tokens") is not None or slo.get("completion_tokens") is not None:
                reported = {"input_tokens": slo.get("prompt_tokens"),
                            "output_tokens": slo.get("completion_tokens")}
            else:
                reported = None
            if "audio_seconds" in (reported or {}):
                fields = dict(reported or {})
            elif method in _TOKEN_METHODS or reported:
                # Missing or untrusted usage settles at the call's estimate, never at 0 (made
                # only when the rule needs it: a trusted usage never does).
                fields = reported_usage(reported, lambda: self.manager.estimate(
                    workspace, self._facts(kwargs, call_type)))

        litellm_cost = _litellm_cost(slo.get("response_cost", kwargs.get("response_cost")))
        if not success:
            litellm_cost = None
        # litellm's cost of usage we do not trust is not trusted either: the book prices the
        # estimate instead.
        cost = litellm_cost if self.cost_source == "litellm" and not fields.get(
            "estimated") else None

        status_code: int | None = 200 if success else None
        error_type = None
        if not success:
            exc = kwargs.get("exception")
            status_code = _status_of(exc, slo)
            error_type = type(exc).__name__ if exc is not None else "error"
            if isinstance(exc, RateLimitError):
                status_code = 429

        provider = str(slo.get("custom_llm_provider") or kwargs.get("custom_llm_provider") or "")
        self._note_limits(workspace, provider, slo)
        return UsageRecord(
            workspace_id=workspace,
            scopes=scopes,
            tags=tuple(tags),
            provider=provider or "unknown",
            model=str(slo.get("model") or kwargs.get("model") or "unknown"),
            api_method=method,
            source="litellm",
            timestamp=datetime.fromtimestamp(self.manager.now(), UTC),
            latency_ms=_latency_ms(start, end),
            success=success,
            status_code=status_code,
            error_type=error_type,
            request_id=str(slo.get("id")) if success and slo.get("id") else None,
            stream=bool(slo.get("stream") or kwargs.get("stream")),
            cost=cost,
            price_source="litellm" if cost is not None else None,
            reported_cost=litellm_cost,
            server_address=_host(slo.get("api_base") or kwargs.get("api_base")),
            **fields,
        )

    def _first_failure(self, call_id: str) -> bool:
        with self._lock:
            if call_id in self._failures:
                return False
            self._failures[call_id] = None
            if len(self._failures) > _SEEN_FAILURES:
                self._failures.popitem(last=False)
            return True

    def _note_limits(self, workspace: str, provider: str, slo: Mapping[str, Any]) -> None:
        hidden = slo.get("hidden_params") or {}
        headers = hidden.get("additional_headers") or {}
        limits = {
            key.split("x-ratelimit-", 1)[1]: value
            for key, value in headers.items()
            if "x-ratelimit-" in key and value is not None
        }
        if limits:
            self.manager.note_provider_limits(
                workspace, provider or "litellm", {f"x-ratelimit-{k}": v for k, v in limits.items()}
            )


def guarded(fn: _F, quota_logger: QuotaLogger) -> _F:
    """``fn`` (``litellm.completion``, ``litellm.embedding``, ...) with a reservation before
    each call, for sync calls: litellm has no sync hook that can stop a call.

    ::

        completion = guarded(litellm.completion, quota_logger)
        completion(model="gpt-4o-mini", messages=...)   # QuotaExceededError before sending

    Async calls need no guard: ``QuotaLogger`` reserves in litellm's
    ``async_pre_call_deployment_hook``. Wrapping an async function works too.
    """
    call_type = getattr(fn, "__name__", "completion")

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def aguarded(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)  # the hook reserves

        return aguarded  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("litellm_call_id", str(uuid.uuid4()))
        view = dict(kwargs)
        for name, value in zip(("model", "messages"), args, strict=False):
            view.setdefault(name, value)
        quota_logger.reserve(view, call_type)
        try:
            return fn(*args, **kwargs)
        except BaseException:
            # Give the estimate back; litellm's failure callback records the failed call.
            quota_logger.manager.release(quota_logger._take(kwargs))
            raise

    return wrapper  # type: ignore[return-value]


_TOKEN_METHODS = frozenset({"chat.completions", "completions", "responses", "embeddings"})


def _litellm_cost(value: Any) -> Decimal | None:
    """litellm's ``response_cost`` when it is a real, positive number of dollars (a float
    sum: the noise below a pico-dollar is dropped); None for anything else (None, a bool,
    NaN, a string), and the call is then priced by the price book."""
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        return None
    try:
        return Decimal(repr(float(value))).quantize(_PICO)
    except InvalidOperation:
        return None


def _stream_done(kwargs: Mapping[str, Any]) -> bool:
    """A plain success function's call is a whole call: not a stream, or a stream's end."""
    return not kwargs.get("stream") or bool(
        kwargs.get("complete_streaming_response")
        or kwargs.get("async_complete_streaming_response"))


def _metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    params = kwargs.get("litellm_params") or {}
    metadata = params.get("metadata") or kwargs.get("metadata") or {}
    return metadata if isinstance(metadata, Mapping) else {}


def _status_of(exc: Any, slo: Mapping[str, Any]) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    info = slo.get("error_information") or {}
    try:
        return int(info.get("error_code") or "")
    except (TypeError, ValueError):
        return None


def _latency_ms(start: Any, end: Any) -> float | None:
    if isinstance(start, datetime) and isinstance(end, datetime):
        return max(0.0, (end - start).total_seconds() * 1000)
    return None


def _logging_worker() -> Any:
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    except ImportError:  # pragma: no cover - older litellm
        return None
    return GLOBAL_LOGGING_WORKER


def _sync_backlog() -> int:
    """Logging tasks litellm has queued or is running in its thread pool (0 if unknown)."""
    executor = getattr(getattr(litellm, "utils", None), "executor", None)
    slots = getattr(executor, "_pending_slots", None)
    cap = getattr(executor, "_max_pending_tasks", None)
    value = getattr(slots, "_value", None)
    if isinstance(cap, int) and isinstance(value, int):
        return cap - value
    return 0


def _host(api_base: Any) -> str | None:
    """The host (and a port that is not the scheme's) of litellm's ``api_base``, or None."""
    if not isinstance(api_base, str) or "://" not in api_base:
        return None
    try:
        parts = urlsplit(api_base)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return host if port is None or port == default else f"{host}:{port}"
