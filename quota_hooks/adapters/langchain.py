"""Record every LangChain chat model and LLM call through one callback handler.

::

    from quota_hooks.adapters.langchain import QuotaCallbackHandler

    handler = QuotaCallbackHandler(manager=manager, workspace_id="ws-1")
    llm.invoke(messages, config={"callbacks": [handler]})   # or ChatOpenAI(callbacks=[handler])

It works for invoke, ainvoke, stream, astream, batch and abatch, nested in chains, tools and
agents, with several models at once: LangChain calls ``on_chat_model_start``/``on_llm_start``
and then ``on_llm_end`` or ``on_llm_error`` once per model run, whatever the call style.

Embeddings have no LangChain callback. Count them at the transport instead: build
``OpenAIEmbeddings(client=track_openai(OpenAI(), ...).embeddings)``, see the README.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.exceptions import ModelRateLimitError
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import (
        ChatGeneration,
        ChatGenerationChunk,
        GenerationChunk,
        LLMResult,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "quota_hooks.adapters.langchain needs langchain-core: "
        "pip install 'quota-hooks[langchain]'"
    ) from exc

from ..compat import get_default_manager
from ..context import current_workspace
from ..errors import QuotaHooksError
from ..manager import QuotaManager
from ..storage.base import Reservation
from ..usage import Estimate, UsageRecord, reported_usage
from ._pairing import RunGroup, RunMark, group_for, open_marks, push_mark
from ._usage import usage_fields

__all__ = ["CHARS_PER_TOKEN", "QuotaCallbackHandler"]

#: Output tokens a run is known to have produced when its model reported no usage: one per 4
#: characters of output (OpenAI's rule of thumb for English text). A run's estimate itself
#: (its prompt and requested output) is the manager's (:meth:`QuotaManager.estimate`).
CHARS_PER_TOKEN = 4
#: Runs started but never ended (a crashed worker, a dropped generator) are forgotten, oldest
#: first, beyond this many; per-run state never grows without bound.
MAX_OPEN_RUNS = 10_000


@dataclass(slots=True)
class _Run:
    """What ``on_*_start`` knew about a run, kept until its end. Never the prompt itself."""

    workspace_id: str
    scopes: dict[str, str]
    tags: tuple[str, ...]
    model: str | None
    provider: str
    chat: bool
    prompt_chars: int
    started: float = field(default_factory=time.perf_counter)
    mark: RunMark | None = None
    facts: Estimate | None = None
    """The facts of the request (model, kind of API, prompt size, output asked for): the
    manager's estimate of them is where the run settles when the model reports no usage, or
    usage that cannot be trusted (made only then, or when a limit reserves it)."""

    def estimate(self, manager: QuotaManager) -> Estimate:
        """What the run was expected to use (what a reservation held)."""
        if self.facts is None:
            return Estimate(input_tokens=-(-self.prompt_chars // CHARS_PER_TOKEN))
        return manager.estimate(self.workspace_id, self.facts)


class QuotaCallbackHandler(BaseCallbackHandler):
    """A LangChain callback handler that records each model run in a :class:`QuotaManager`.

    Args:
        manager: where runs are recorded; the process-wide default when omitted.
        workspace_id: the workspace of runs whose metadata names none (``"default"``).
        scopes: scopes added to every run (e.g. ``{"team": "search"}``).
        workspace_key: the run-metadata key that names the workspace; it wins over
            ``workspace_id``, so one handler can serve several workspaces.

    Run metadata ``user``/``user_id`` and tags of the form ``"kind:value"`` become scopes.

    Why one sync handler with ``run_inline = True``: LangChain would otherwise hand each event
    of a sync handler to a thread pool when the model runs under asyncio, a hop that costs more
    than the work itself. The work here is a few dict operations and ``manager.record()``,
    which does no network I/O on the calling thread for the memory and SQLite stores (SQLite
    writes are batched by a writer thread), so running inline never blocks an event loop.
    The handler is thread-safe: its only shared state is the per-run table, under a lock.
    """

    run_inline = True
    raise_error = True  # only for a refused call (QuotaExceededError); nothing else escapes

    def __init__(
        self,
        manager: QuotaManager | None = None,
        workspace_id: str = "default",
        *,
        scopes: Mapping[str, str] | None = None,
        workspace_key: str = "workspace_id",
    ) -> None:
        super().__init__()
        self.manager = manager if manager is not None else get_default_manager()
        self.workspace_id = workspace_id
        self.scopes = dict(scopes or {})
        self.workspace_key = workspace_key
        self._runs: OrderedDict[UUID, _Run] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def open_runs(self) -> int:
        """Runs started and not yet ended (for monitoring; 0 when idle)."""
        return len(self._runs)

    # ------------------------------------------------------------------ start
    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember who pays for this chat model run and which model it asked for."""
        chars = sum(_text_chars(m.content) for batch in messages for m in batch)
        group = _group(parent_run_id, kwargs)
        self._start(run_id, tags, metadata, invocation_params, chars, group, chat=True)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember who pays for this plain-LLM run and which model it asked for."""
        chars = sum(len(p) for p in prompts)
        group = _group(parent_run_id, kwargs)
        self._start(run_id, tags, metadata, invocation_params, chars, group, chat=False)

    def _start(
        self,
        run_id: UUID,
        tags: list[str] | None,
        metadata: Mapping[str, Any] | None,
        params: Mapping[str, Any] | None,
        prompt_chars: int,
        group: RunGroup,
        *,
        chat: bool,
    ) -> None:
        try:
            metadata = metadata or {}
            params = params or {}
            workspace = metadata.get(self.workspace_key)
            scopes = dict(self.scopes)
            if not (isinstance(workspace, str) and workspace):
                # Who pays: the run's metadata, then the workspace() block the run is in,
                # then the handler's own workspace.
                context = current_workspace()
                if context is not None:
                    workspace = context.workspace_id
                    scopes = dict(context.scopes)
            for tag in tags or ():
                kind, sep, value = str(tag).partition(":")
                if sep and kind and value:
                    scopes[kind] = value
            user = metadata.get("user") or metadata.get("user_id")
            if user:
                scopes["user"] = str(user)
            model = (
                params.get("model")
                or params.get("model_name")
                or metadata.get("ls_model_name")
                or params.get("model_id")
            )
            run = _Run(
                workspace_id=workspace if isinstance(workspace, str) and workspace
                else self.workspace_id,
                scopes=scopes,
                tags=tuple(str(t) for t in tags or ()),
                model=str(model) if model else None,
                provider=str(metadata.get("ls_provider") or params.get("_type") or ""),
                chat=chat,
                prompt_chars=prompt_chars,
            )
            run.mark = self._acquire(run, params, group)
            with self._lock:
                self._runs[run_id] = run
                evicted = self._runs.popitem(last=False)[1] if len(
                    self._runs) > MAX_OPEN_RUNS else None
            if evicted is not None and evicted.mark is not None:
                self.manager.release(evicted.mark.close())
        except QuotaHooksError:
            # A refused call: LangChain aborts it before any request (raise_error), and with
            # it the other prompts of the same generate() that were already started: none of
            # them will end, so their reservations go back now.
            self._abandon_unclaimed(group)
            raise
        except Exception as exc:
            self.manager.note_tracking_failure("langchain:start", exc)

    def _abandon_unclaimed(self, group: RunGroup, keep: UUID | None = None) -> None:
        """Close the runs of ``group`` (one ``generate()``) in the current context that no
        request has claimed, and never will: LangChain gave up on them. Their reservations go
        back at once; runs of other generate() calls (an enclosing run, say) are untouched."""
        if group.size < 2:
            return
        live = {id(mark) for mark in open_marks() if not mark.claimed and mark.group is group}
        if not live:
            return
        with self._lock:
            gone = [run_id for run_id, run in self._runs.items()
                    if run_id != keep and run.mark is not None and id(run.mark) in live]
            runs = [self._runs.pop(run_id) for run_id in gone]
        for run in runs:
            if run.mark is not None:
                self.manager.release(run.mark.close())

    def _acquire(self, run: _Run, params: Mapping[str, Any], group: RunGroup) -> RunMark:
        """Reserve the run's estimate and open its mark for an inner OpenAI transport.

        The handler hands the manager the facts of the run (its model, kind of API, prompt
        characters and the output it asks for at most); the manager works out the token
        counts, which the run settles at when its model reports no usage it can trust.

        Inside a running event loop the handler cannot wait without blocking it, so there
        ``wait`` limits refuse at once (the inner transport, if any, waits properly).
        """
        requested = next(
            (v for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
             if isinstance(v := params.get(k), int) and not isinstance(v, bool)),
            None,
        )
        facts = run.facts = Estimate(
            model=run.model or "unknown",
            api_method="chat.completions" if run.chat else "completions",
            provider=run.provider or None,
            prompt_size=run.prompt_chars,
            max_tokens=requested,
        )
        reservation = self.manager.acquire(
            run.workspace_id, facts, scopes=run.scopes, wait=not _in_event_loop()
        )
        mark = RunMark(
            reservation, workspace_id=run.workspace_id, scopes=run.scopes,
            model=run.model, chat=run.chat, group=group,
        )
        push_mark(mark)
        return mark

    # ------------------------------------------------------------------ end
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the run with the usage the model reported (or a stated estimate)."""
        run = self._pop(run_id)
        reservation, inner = _close(run)
        if inner:  # an inner OpenAI transport records this call at the HTTP level
            self.manager.release(reservation)  # what it did not take (a prompt of a batch)
            return
        try:
            record = self.to_record(run, response)
        except Exception as exc:
            self.manager.note_tracking_failure(
                "langchain:end", exc, run.workspace_id if run else None
            )
            self.manager.release(reservation)
            return
        self.manager.record(record, reservation)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Record a failed run: no tokens, its status code, and ``rate_limited`` on a 429."""
        run = self._pop(run_id)
        reservation, inner = _close(run)
        if run is not None and run.mark is not None and not _in_event_loop():
            # A sync generate() over several prompts stops at the first error: the prompts
            # after it are never sent and never end.
            self._abandon_unclaimed(run.mark.group, keep=run_id)
        if inner:
            self.manager.release(reservation)
            reservation = None
            if run is not None and run.mark is not None and (
                    run.mark.recorded or _stream_closed(error)):
                return  # the transport recorded (or will record) the attempts it saw
            # No attempt got an answer (connection refused, timeouts): the transport records
            # none, so the run's failure is recorded here, as without the transport.
        try:
            record = self.error_record(run, error)
        except Exception as exc:
            self.manager.note_tracking_failure(
                "langchain:error", exc, run.workspace_id if run else None
            )
            self.manager.release(reservation)
            return
        self.manager.record(record, reservation)

    def _pop(self, run_id: UUID) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    # ------------------------------------------------------------------ mapping
    def to_record(self, run: _Run | None, response: LLMResult) -> UsageRecord:
        """The record of one finished run (``run`` is None if its start was not seen)."""
        usage: dict[str, Any] | None = None
        model = provider = tier = None
        streamed = responses_api = False
        output_chars = 0
        for candidates in response.generations:  # one list per prompt; n>1 choices share usage
            taken = False
            for gen in candidates:
                streamed = streamed or isinstance(gen, (ChatGenerationChunk, GenerationChunk))
                output_chars += len(gen.text or "")
                if not isinstance(gen, ChatGeneration):
                    continue
                meta = gen.message.response_metadata or {}
                model = model or meta.get("model_name") or meta.get("model")
                provider = provider or meta.get("model_provider")
                tier = tier or meta.get("service_tier")
                responses_api = responses_api or meta.get("object") == "response" or str(
                    meta.get("id") or gen.message.id or ""
                ).startswith("resp_")
                found = getattr(gen.message, "usage_metadata", None)
                if found and not taken:
                    usage = _add(usage, _from_usage_metadata(found))
                    taken = True
        llm_output = response.llm_output or {}
        if usage is None:
            token_usage = llm_output.get("token_usage") or llm_output.get("usage")
            if isinstance(token_usage, Mapping) and token_usage:
                usage = usage_fields(token_usage)
        model = model or llm_output.get("model_name") or (run.model if run else None)
        chat = run.chat if run else True
        # Missing or untrusted usage settles at the run's estimate, never at 0.
        usage = reported_usage(usage, self._estimate_of(run),
                               observed_output=-(-output_chars // CHARS_PER_TOKEN))
        return UsageRecord(
            **self._identity(run),
            provider=str(provider or (run.provider if run else "") or "unknown"),
            model=str(model or "unknown"),
            api_method="responses" if responses_api else
            ("chat.completions" if chat else "completions"),
            stream=streamed,
            success=True,
            status_code=200,
            request_id=_request_id(response),
            service_tier=str(tier) if tier else None,
            **usage,
        )

    def error_record(self, run: _Run | None, error: BaseException) -> UsageRecord:
        """The record of one failed run; a stream the caller closed early is no failure: the
        provider worked for it, so it settles at the run's estimate."""
        if _stream_closed(error):
            fields = reported_usage(None, self._estimate_of(run))
            fields["estimate_reason"] = "the stream was closed before it ended"
            return UsageRecord(
                **self._identity(run),
                provider=(run.provider if run else "") or "unknown",
                model=(run.model if run else None) or "unknown",
                api_method="chat.completions" if (run.chat if run else True) else "completions",
                stream=True, success=True, status_code=200, **fields,
            )
        status = getattr(error, "status_code", None)
        if not isinstance(status, int):
            status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, ModelRateLimitError) or type(error).__name__ == "RateLimitError":
            status = 429
        return UsageRecord(
            **self._identity(run),
            provider=(run.provider if run else "") or "unknown",
            model=(run.model if run else None) or "unknown",
            api_method="chat.completions" if (run.chat if run else True) else "completions",
            success=False,
            status_code=status if isinstance(status, int) else None,
            error_type=type(error).__name__,
        )

    def _estimate_of(self, run: _Run | None) -> Callable[[], Estimate]:
        """The run's estimate, made when the usage rule needs it."""
        if run is None:
            return lambda: Estimate(input_tokens=0)
        return lambda: run.estimate(self.manager)

    def _identity(self, run: _Run | None) -> dict[str, Any]:
        if run is None:
            return {
                "workspace_id": self.workspace_id,
                "scopes": dict(self.scopes),
                "source": "langchain",
                "timestamp": datetime.fromtimestamp(self.manager.now(), UTC),
            }
        return {
            "workspace_id": run.workspace_id,
            "scopes": run.scopes,
            "tags": run.tags,
            "source": "langchain",
            "timestamp": datetime.fromtimestamp(self.manager.now(), UTC),
            "latency_ms": (time.perf_counter() - run.started) * 1000,
        }


def _close(run: _Run | None) -> tuple[Reservation | None, bool]:
    """The run's reservation (if no inner adapter took it) and whether an inner adapter
    claimed the run (it records the call, even if its stream is still being closed)."""
    if run is None or run.mark is None:
        return None, False
    return run.mark.close(), run.mark.claimed


def _stream_closed(error: BaseException) -> bool:
    """True when the run "failed" because its caller stopped reading a stream (``break`` in
    ``stream()``, a cancelled ``astream()``): the provider was still called."""
    return isinstance(error, (GeneratorExit, asyncio.CancelledError))


def _group(parent_run_id: UUID | None, kwargs: Mapping[str, Any]) -> RunGroup:
    size = kwargs.get("batch_size")
    return group_for(parent_run_id, size if isinstance(size, int) and size > 0 else 1)




def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _from_usage_metadata(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Token fields from LangChain's ``UsageMetadata``, as the model reported them (``None``
    where it gave nothing): :func:`~quota_hooks.usage.reported_usage` decides what to trust."""
    inputs = usage.get("input_token_details") or {}
    outputs = usage.get("output_token_details") or {}
    if not isinstance(inputs, Mapping):
        inputs = {}
    if not isinstance(outputs, Mapping):
        outputs = {}
    return {
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "cached_input_tokens": inputs.get("cache_read"),
        "cache_write_tokens": inputs.get("cache_creation"),
        # langchain-anthropic tells the 1-hour cache writes apart.
        "cache_write_1h_tokens": inputs.get("ephemeral_1h_input_tokens"),
        "audio_input_tokens": inputs.get("audio"),
        "reasoning_tokens": outputs.get("reasoning"),
        "audio_output_tokens": outputs.get("audio"),
    }


def _add(total: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    """Usage of several prompts summed (a value that is not a count stays as it is, so the
    usage rule still sees it)."""
    if total is None:
        return more
    out = dict(total)
    for key, value in more.items():
        have = out.get(key)
        if value is None:
            continue
        if have is None:
            out[key] = value
        elif type(have) is int and type(value) is int:
            out[key] = have + value
        else:
            out[key] = value if type(have) is int else have
    return out


def _text_chars(content: str | Sequence[Any]) -> int:
    if isinstance(content, str):
        return len(content)
    return sum(
        len(part) if isinstance(part, str)
        else len(str(part.get("text", ""))) if isinstance(part, Mapping) else 0
        for part in content
    )


def _request_id(response: LLMResult) -> str | None:
    request_id = (response.llm_output or {}).get("id")
    return str(request_id) if request_id else None
