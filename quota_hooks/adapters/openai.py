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

import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote, unquote

try:
    import openai
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "quota_hooks.adapters.openai needs the OpenAI SDK: pip install 'quota-hooks[openai]'"
    ) from exc

from ..compat import get_default_manager
from ..context import current_workspace
from ..errors import ConfigurationError, QuotaHooksError
from ..manager import QuotaManager
from ..storage.base import Reservation
from ..usage import Estimate, UsageRecord, reported_usage
from ._pairing import RunMark, claim
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

WORKSPACE_HEADER = "x-quota-hooks-workspace"
SCOPES_HEADER = "x-quota-hooks-scopes"
#: What ``track_openai`` was given: the workspace and scopes of a call that names none
#: itself (in ``x-quota-hooks-workspace``) and runs in no ``quota_hooks.workspace()`` block.
DEFAULT_WORKSPACE_HEADER = "x-quota-hooks-default-workspace"
DEFAULT_SCOPES_HEADER = "x-quota-hooks-default-scopes"
_OUR_HEADERS = (WORKSPACE_HEADER, SCOPES_HEADER, DEFAULT_WORKSPACE_HEADER, DEFAULT_SCOPES_HEADER)
_RETRY_HEADER = "x-stainless-retry-count"
_PARSE_LIMIT = 16 * 1024 * 1024  # bodies up to this size are parsed whole; larger by key
_RUN_MEMORY = 10_000
_LIMITS_EVERY = 1.0  # seconds between two reads of a workspace's x-ratelimit-* headers
_TERMINAL_RUN_STATES = {"completed", "failed", "cancelled", "expired", "incomplete"}
_TERMINAL_BATCH_STATES = {"completed", "failed", "cancelled", "expired"}
#: Calls that hand back a stored response, finished or not: its usage counts once (a
#: background response's, on top of its estimate), whichever of them sees it finished.
_RESPONSE_READS = {"responses.retrieve", "responses.cancel"}

ClientT = TypeVar("ClientT", bound="openai.OpenAI | openai.AsyncOpenAI")

# ---------------------------------------------------------------------------------- api methods
def _routes(*pairs: tuple[str, str]) -> tuple[tuple[re.Pattern[str], str], ...]:
    """``(path pattern, method name)`` pairs, compiled, tried in order."""
    return tuple((re.compile(pattern), name) for pattern, name in pairs)


_ROUTES = _routes(
    (r"chat/completions", "chat.completions"),
    (r"completions", "completions"),
    (r"responses", "responses"),
    (r"embeddings", "embeddings"),
    (r"images/generations", "images.generate"),
    (r"images/edits", "images.edit"),
    (r"images/variations", "images.variation"),
    (r"audio/speech", "audio.speech"),
    (r"audio/transcriptions", "audio.transcriptions"),
    (r"audio/translations", "audio.translations"),
    (r"threads(/[^/]+)?/runs(/.*)?", "threads.runs"),
    (r"threads/[^/]+/messages(/.*)?", "threads.messages"),
    (r"fine_tuning(/.*)?", "fine_tuning"),
    (r"vector_stores(/.*)?", "vector_stores"),
)
_PREFIX = re.compile(r"^/*(?:openai/deployments/[^/]+/|openai/)?(?:v1/)?")


#: Calls on a stored response or chat completion (``GET /responses/{id}``, ``DELETE``, its
#: input items, a cancel, a token count) and on batches: housekeeping, which generates no
#: tokens, for the verbs given (None: any). Anything else under ``/responses`` (a ``POST`` of a
#: new endpoint) is the ``responses`` method itself: counted, never let through as housekeeping.
_ITEMS: tuple[tuple[re.Pattern[str], str, frozenset[str] | None], ...] = tuple(
    (re.compile(pattern), name, None if verbs is None else frozenset(verbs.split()))
    for pattern, name, verbs in (
        (r"responses/input_tokens", "responses.input_tokens", "POST"),
        (r"responses/[^/]+/input_items", "responses.input_items", "GET"),
        (r"responses/[^/]+/cancel", "responses.cancel", "POST"),
        (r"responses/[^/]+", "responses.retrieve", "GET"),
        (r"responses/[^/]+", "responses.delete", "DELETE"),
        (r"chat/completions/[^/]+/messages", "chat.completions.messages", "GET"),
        (r"chat/completions/[^/]+", "chat.completions.retrieve", "GET"),
        (r"chat/completions/[^/]+", "chat.completions.update", "POST"),
        (r"chat/completions/[^/]+", "chat.completions.delete", "DELETE"),
        (r"batches(/[^/]+(/cancel)?)?", "batches", None),
    )
)
#: The housekeeping methods: their usage is never counted (a batch's once, when it completes;
#: a response's once, see :meth:`_Call.record`).
_HOUSEKEEPING = frozenset(name for _, name, _ in _ITEMS)


def api_method_for(method: str, path: str) -> str:
    """The API method of an OpenAI HTTP call, from its verb and path (``chat.completions``,
    ``images.generate``, ``responses.retrieve`` ...), under any base path (``/v1``, Azure's
    deployments, OpenRouter's ``/api/v1``, Gemini's ``/v1beta/openai``): the first known route
    at the end of the path wins. An unknown path gives its first segment, never an error."""
    rest = _PREFIX.sub("", path.split("?", 1)[0]).strip("/")
    verb = method.upper()
    segments = [part for part in rest.split("/") if part]
    # Generating calls are POSTs: only they look past a base path the prefix rule does not
    # know (a GET of /organization/usage/completions is not a completion).
    starts = min(len(segments), _MAX_PREFIX_SEGMENTS + 1) if verb == "POST" else 1
    for start in range(starts):
        tail = "/".join(segments[start:])
        for pattern, name, verbs in _ITEMS:
            if (verbs is None or verb in verbs) and pattern.fullmatch(tail):
                return name
        for pattern, name in _ROUTES:
            if pattern.fullmatch(tail):
                return name
        if tail.startswith("responses/"):
            return "responses"  # a generating endpoint we do not know yet: counted as one
    return segments[0] if segments else "unknown"


#: Path segments of a base URL that are skipped to find a route: ``api/v1``, ``v1beta/openai``,
#: Cloudflare's ``client/v4/accounts/<id>/ai/v1`` (6), Vertex AI's
#: ``v1/projects/<p>/locations/<l>/endpoints/openapi`` (7), with room to spare; the bound only
#: keeps a path of thousands of segments from costing thousands of matches.
_MAX_PREFIX_SEGMENTS = 12


def _find_key(body: bytes, key: str) -> Any:
    """The value of the last top-level-looking ``"key":`` in a large JSON body."""
    needle = b'"' + key.encode() + b'"'
    at = body.rfind(needle)
    while at >= 0:
        colon = body.find(b":", at + len(needle))
        if colon >= 0:
            try:
                value, _ = json.JSONDecoder().raw_decode(body[colon + 1 :].lstrip().decode())
                return value
            except ValueError:
                pass
        at = body.rfind(needle, 0, at)
    return None


# ---------------------------------------------------------------------------------- the hub
class _Hub:
    """Tracking state shared by every transport of one HTTP client."""

    def __init__(self, manager: QuotaManager, inject_stream_usage: bool) -> None:
        self.manager = manager
        self.inject_stream_usage = inject_stream_usage
        self._runs: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._providers: dict[tuple[str, str, int | None], str] = {}
        self._limits_read: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

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

    def limits_due(self, workspace_id: str, provider: str) -> bool:
        """True when a workspace's rate-limit headers from ``provider`` were last read a
        second ago or more (:data:`_LIMITS_EVERY`): then they are read again."""
        key, now = (workspace_id, provider), time.monotonic()
        last = self._limits_read.get(key)
        if last is not None and now - last < _LIMITS_EVERY:
            return False
        if len(self._limits_read) >= _RUN_MEMORY:
            self._limits_read.clear()
        self._limits_read[key] = now
        return True

    def first_sight_of_terminal_run(self, run_id: str) -> bool:
        """True the first time a run is seen in a terminal state (its usage counts once)."""
        return self.counted(run_id) is None

    def counted(self, object_id: str, settled: tuple[int, int] = (0, 0)
                ) -> tuple[int, int] | None:
        """What was already counted for a run, batch or response (its input and output
        tokens, ``(0, 0)`` when its own usage was), or None the first time: it is then
        remembered at ``settled`` (the last 10,000 ids)."""
        with self._lock:
            before = self._runs.get(object_id)
            self._runs[object_id] = settled if before is None else before
            if len(self._runs) > _RUN_MEMORY:
                self._runs.popitem(last=False)
            return before

    def settle(self, object_id: str) -> None:
        """A response whose own usage has now been counted (its estimate topped up)."""
        with self._lock:
            if object_id in self._runs:
                self._runs[object_id] = (0, 0)

    def failed(self, stage: str, exc: BaseException, workspace_id: str | None) -> None:
        self.manager.note_tracking_failure(f"openai:{stage}", exc, workspace_id)


class _Call:
    """What one HTTP attempt taught us, from request to the end of its body."""

    def __init__(self, hub: _Hub, request: Any, lib: Any) -> None:
        self.hub = hub
        self.lib = lib
        self.started = time.perf_counter()
        headers = request.headers
        # Who pays: the call's own header, then the workspace() block it runs in, then what
        # track_openai was given; the scopes come with the workspace (the call's own win).
        # Who pays: the call's own header, then the workspace() block it runs in, then what
        # track_openai was given. The scopes of whichever gave the workspace (the block's, or
        # track_openai's), with the call's own scopes header over them, kind by kind.
        named, context = headers.get(WORKSPACE_HEADER), current_workspace()
        if not named and context is not None:
            self.workspace_id = context.workspace_id
            self.scopes: dict[str, str] = dict(context.scopes)
        else:
            # The call's own header is the id as written; track_openai's is URL-quoted.
            self.workspace_id = named or unquote(headers.get(DEFAULT_WORKSPACE_HEADER)
                                                 or "default")
            self.scopes = _scopes(headers.get(DEFAULT_SCOPES_HEADER))
        self.scopes.update(_scopes(headers.get(SCOPES_HEADER)))
        try:
            self.attempt = int(headers.get(_RETRY_HEADER) or 0)
        except ValueError:
            self.attempt = 0
        url = request.url
        self.provider = hub.provider_of(url)
        self.server = url.host if url.port is None else f"{url.host}:{url.port}"
        self.service_tier: str | None = None
        self.method = api_method_for(request.method, url.path)
        self.model: str | None = None
        self.stream = False
        self.max_output: int | None = None
        self.prompt_size = 0
        """Bytes of the JSON request body: the prompt size the manager estimates from."""
        self.reservation: Reservation | None = None
        self.prompts = 1
        self.inject = False
        self.request_bytes = 0
        self.characters = 0
        self.duration: float | None = None
        """The seconds of audio a transcription's response gave (verbose_json), if any."""
        self.image_size: str | None = None
        self.image_quality: str | None = None
        self.images_requested = 1
        self.status = 0
        self.headers: Any = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.usage: Mapping[str, Any] | None = None
        self.response_model: str | None = None
        self.events = 0
        self.run: tuple[str, Mapping[str, Any]] | None = None
        """A run or batch in a terminal state and its usage: counted once, by its id."""
        self.response: tuple[str, bool] | None = None
        """The id of the Responses API object of the body, and whether it is finished."""
        self.error: Mapping[str, Any] | None = None
        self.sse: _SSE | None = None
        self.decoder: _Decoder | None = None
        self.unreadable = False
        """True once reading the body failed: the attempt settles at its estimate."""
        self.complete = False
        """True when the whole body was known when the response arrived (read already)."""
        self.mark: RunMark | None = None
        """The outer run (LangChain) this attempt belongs to, if any."""
        self.done = False
        self.request = self._read_request(request)

    # ---------------------------------------------------------------- request
    def _read_request(self, request: Any) -> Any:
        stream = request.stream
        fields = getattr(stream, "fields", None)
        if fields is not None:  # multipart (audio, image edits): never read the files
            for item in fields:
                if type(item).__name__ == "DataField":
                    if item.name == "model":
                        self.model = str(item.value)
                    elif item.name == "size":
                        self.image_size = str(item.value)
                    elif item.name == "quality":
                        self.image_quality = str(item.value)
                    elif item.name == "n":
                        self.images_requested = int(item.value)
            try:  # the size of the upload, for a transcription without usage (never read)
                self.request_bytes = int(request.headers.get("content-length") or 0)
            except ValueError:
                self.request_bytes = 0
            return request
        try:
            content = request.content
        except Exception:  # a streaming body the caller has not read: leave it alone
            return request
        self.request_bytes = len(content)
        if not content or not request.headers.get("content-type", "").startswith(
            "application/json"
        ):
            return request
        try:
            body = json.loads(content)
        except ValueError:
            return request
        if not isinstance(body, dict):
            return request
        model = body.get("model")
        self.model = model if isinstance(model, str) else None
        self.stream = body.get("stream") is True
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self.max_output = value
                break
        self.prompt_size = len(content)
        prompt = body.get("prompt")
        if self.method == "completions" and isinstance(prompt, list) and prompt and not isinstance(
            prompt[0], int
        ):
            self.prompts = len(prompt)  # a legacy completions request with several prompts
        if self.method == "audio.speech":
            self.characters = len(str(body.get("input") or ""))
        elif self.method.startswith("images."):
            self.image_size = body.get("size")
            self.image_quality = body.get("quality")
            self.images_requested = int(body.get("n") or 1)
        if (
            self.stream
            and self.hub.inject_stream_usage
            and self.method in ("chat.completions", "completions")
            and not (body.get("stream_options") or {}).get("include_usage")
        ):
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
            self.inject = True
            new_content = json.dumps(body, separators=(",", ":")).encode()
            headers = self.lib.Headers(request.headers)
            headers["content-length"] = str(len(new_content))
            # The usage chunk is removed from the bytes the caller sees, which needs them plain.
            headers["accept-encoding"] = "identity"
            return self.lib.Request(
                request.method,
                request.url,
                headers=headers,
                content=new_content,
                extensions=request.extensions,
            )
        return request

    # ---------------------------------------------------------------- enforcement
    def facts(self) -> Estimate:
        """What this request asks for, as facts (its model, method, body size, requested
        output, images, characters to speak): the manager turns them into token counts."""
        generating = self.method in _GENERATING_METHODS
        images = self.images_requested if self.method.startswith("images.") else 0
        return Estimate(model=self.model or "unknown", api_method=self.method,
                        provider=self.provider, prompt_size=self.prompt_size,
                        max_tokens=self.max_output if generating else None,
                        images=images, image_size=self.image_size,
                        image_quality=self.image_quality, characters=self.characters)

    def estimate(self) -> Estimate:
        """What this request is expected to use: its facts with the manager's token counts
        (for the workspace that pays), where it settles when its usage cannot be trusted."""
        return self.hub.manager.estimate(self.workspace_id, self.facts())

    def outer_reservation(self) -> tuple[bool, Reservation | None]:
        """``(True, its reservation)`` when this attempt takes an outer run's reservation
        (see :mod:`quota_hooks.adapters._pairing`); ``(False, None)`` when it must reserve
        for itself, which retries inside an outer run do too. An attempt that belongs to an
        outer run is charged to that run's workspace and scopes either way."""
        found = claim(self.model, self.method, self.attempt, self.prompts)
        mark = self.mark = found.mark
        if mark is None:
            return False, None
        if mark.workspace_id is not None:  # the outer run says who pays
            self.workspace_id = mark.workspace_id
            self.scopes = dict(mark.scopes)
        return found.takes_reservation, found.reservation

    def outgrows(self, reservation: Reservation | None) -> bool:
        """True when this request is clearly bigger than the outer run's reservation, which
        counted message text only (tool schemas, images and system parts make requests
        bigger): the request then reserves its own estimate instead, so that pairing with the
        LangChain handler never lets a call past a limit the transport alone would enforce."""
        if reservation is None:
            return False
        estimate = self.estimate()
        wanted = estimate.tokens
        return wanted > 2 * reservation.delta.tokens + 256

    # ---------------------------------------------------------------- response
    def on_response(self, response: Any) -> Any:
        """Begin reading ``response``; returns the response the caller gets.

        The body is read through the HTTP library's own content decoder (gzip, deflate, br,
        zstd: whatever the library can decode) while the caller gets the bytes of the wire
        unchanged. When the injected usage chunk must be cut from an event stream that came
        compressed, the caller gets the decoded stream instead, without its
        ``Content-Encoding``: the client reads it exactly as it would have read the compressed
        one. A body that an inner transport has already read is taken whole, at once
        (:attr:`complete`).
        """
        self.status = response.status_code
        self.headers = headers = response.headers
        content_type = headers.get("content-type", "").lower()
        # An event stream as the SDK sees one: by its type, or because the request asked for
        # a stream and a success came back that is not JSON (ndjson, text/plain, no type).
        if "event-stream" in content_type or (self.stream and 200 <= self.status < 300
                                               and not content_type.startswith("application/json")):
            self.stream = True
            self.sse = _SSE(self, filtering=self.inject)
        filtering = self.sse is not None and self.sse.filtering
        if hasattr(response, "_content"):  # an inner transport read (and decoded) it already
            content = response.content
            shown = self._read_plain(content) + self._take_end()
            self.complete = True
            if filtering and shown != content:  # decoded and cut: no encoding, another length
                response = self.lib.Response(
                    response.status_code,
                    headers=_without(headers, "content-length", "content-encoding"),
                    content=shown, extensions=response.extensions,
                )
            return response
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding and encoding != "identity":
            self.decoder = _Decoder(self.lib, headers)
        if filtering:  # the caller gets our (plain, filtered) bytes: other length, no encoding
            for name in ("content-length", "content-encoding"):
                if name in headers and (name == "content-length" or self.decoder is not None):
                    del headers[name]
        return response

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk of the body on its way to the caller; return what the caller gets."""
        try:
            plain = chunk if self.decoder is None else self.decoder.decode(chunk)
        except Exception as exc:  # a corrupt body, which the client's own decoder rejects too
            self._lost(exc)
            self.decoder = None
            return chunk
        if not self.unreadable:
            try:
                shown = self._read_plain(plain)
            except Exception as exc:  # a bug of ours: the caller still gets the whole body
                self._lost(exc)
                shown = plain
        else:
            shown = plain
        return shown if self._filtering else chunk

    def end_of_body(self) -> bytes:
        """The body ended: the decoder's tail, and what SSE filtering held back."""
        try:
            tail = b"" if self.decoder is None else self.decoder.flush()
        except Exception as exc:
            self._lost(exc)
            return b""
        shown = tail
        if not self.unreadable:
            try:
                shown = self._read_plain(tail) + self._take_end()
            except Exception as exc:
                self._lost(exc)
        return shown if self._filtering else b""

    @property
    def _filtering(self) -> bool:
        return self.sse is not None and self.sse.filtering

    def _read_plain(self, plain: bytes) -> bytes:
        """Learn from decoded body bytes; returns the caller's share (the filtered stream)."""
        if self.sse is not None:
            return self.sse.feed(plain)
        if plain and self.body_size <= _BODY_LIMIT:
            self.body.append(plain)
            self.body_size += len(plain)
        return plain

    def _take_end(self) -> bytes:
        return self.sse.flush() if self.sse is not None else b""

    def _lost(self, exc: BaseException) -> None:
        """Reading the body failed (a corrupt encoding, a bug of ours): the rest goes to the
        caller untouched, and the attempt settles at its estimate (see :meth:`record`)."""
        self.unreadable = True
        self.hub.failed("read", exc, self.workspace_id)

    def record(self) -> UsageRecord | None:
        """The record of this attempt; None after the first call.

        Token usage is the provider's when it can be trusted; otherwise (missing, null,
        untrusted, unreadable, a stream closed before its usage) the attempt settles at its
        estimate (:func:`~quota_hooks.usage.reported_usage`), never at 0.
        """
        if self.done:
            return None
        self.done = True
        latency = (time.perf_counter() - self.started) * 1000
        if self.sse is None and not self.unreadable:
            self._parse_json()
        usage = self.usage
        if self.run is not None and self.hub.first_sight_of_terminal_run(self.run[0]):
            usage = self.run[1]  # a run's tokens count once, however often it is polled
        success = 200 <= self.status < 400
        fields: dict[str, Any] = {}
        if success and self.method in _RESPONSE_READS and self.response is not None:
            fields = self._retrieved_response(usage)
        elif self.method in _HOUSEKEEPING and not (self.run and self.method == "batches"):
            pass  # no tokens: a stored object's own call counted them
        elif success and self.method in _TOKEN_METHODS:
            reported = usage_fields(usage) if usage and not self.unreadable else None
            fields = reported_usage(reported, self.estimate(), observed_output=self.events)
            if self.unreadable and reported is None:
                fields["estimate_reason"] = "the response body could not be read"
            if self.method == "responses" and self.response is not None:
                # Counted now; a background response (queued, no usage yet) at its
                # estimate, topped up when it is retrieved finished.
                rid, done = self.response
                settled = (0, 0) if done else (fields.get("input_tokens", 0),
                                               fields.get("output_tokens", 0))
                self.hub.counted(rid, settled)
        elif usage and not self.unreadable:
            fields = {k: v for k, v in usage_fields(usage).items() if v is not None}
            if self.method == "batches":
                fields["batch"] = True  # a batch's tokens, at the Batch API's price
        elif success and self.method == "audio.speech":
            fields["characters"] = self.characters
        elif success and self.method in _AUDIO_IN_METHODS:
            fields = self._audio_seconds()
        elif success and self.method.startswith("images.") and (self.body_size or self.complete):
            fields["images"] = self.images_requested
            fields["image_size"] = self.image_size
            fields["image_quality"] = self.image_quality
        return UsageRecord(
            workspace_id=self.workspace_id,
            scopes=self.scopes,
            provider=self.provider,
            source="openai",
            timestamp=datetime.fromtimestamp(self.hub.manager.now(), UTC),
            model=self.response_model or self.model or "unknown",
            api_method=self.method,
            latency_ms=latency,
            success=success,
            status_code=self.status,
            error_type=None if success else self._error_type(),
            request_id=self.headers.get("x-request-id") if self.headers is not None else None,
            stream=self.stream,
            attempt=self.attempt,
            service_tier=self.service_tier,
            server_address=self.server,
            **fields,
        )

    def fallback_record(self) -> UsageRecord:
        """The attempt at its estimate, for when :meth:`record` itself failed."""
        fields = reported_usage(None, self.estimate(), observed_output=self.events)
        fields["estimate_reason"] = "tracking failed reading the response"
        return UsageRecord(
            workspace_id=self.workspace_id, scopes=self.scopes, provider=self.provider,
            source="openai", model=self.model or "unknown", api_method=self.method,
            status_code=self.status or None, success=not self.status or self.status < 400,
            timestamp=datetime.fromtimestamp(self.hub.manager.now(), UTC),
            attempt=self.attempt, server_address=self.server, **fields,
        )

    def _parse_json(self) -> None:
        if not self.body:
            return
        body = b"".join(self.body) if len(self.body) > 1 else self.body[0]
        self.body = []
        body = body.lstrip().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM is not JSON
        if not body.lstrip().startswith(b"{"):
            return
        data: Any
        if len(body) <= _PARSE_LIMIT:
            try:
                data = json.loads(body)
            except ValueError:
                return
        else:
            data = {"usage": _find_key(body, "usage"), "model": _find_key(body, "model")}
        if not isinstance(data, dict):
            return
        self._take(data)

    def _take(self, data: Mapping[str, Any]) -> None:
        """Learn from one JSON object of the response (a whole body or one SSE event)."""
        model = data.get("model")
        if isinstance(model, str) and model:
            self.response_model = model
        tier = data.get("service_tier")
        if isinstance(tier, str) and tier:
            self.service_tier = tier  # the tier actually served is the one billed
        kind = data.get("object")
        if kind in ("thread.run", "batch"):
            # A cancelled or expired batch is billed for the requests it finished.
            done = _TERMINAL_RUN_STATES if kind == "thread.run" else _TERMINAL_BATCH_STATES
            if data.get("status") in done and isinstance(data.get("usage"), dict):
                self.run = (f"{kind}:{data.get('id')}", data["usage"])
            return
        if kind == "response" and isinstance(data.get("id"), str):
            self.response = (data["id"], data.get("status") in _TERMINAL_RUN_STATES)
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        elif self.status >= 400 and isinstance(data.get("error"), dict):
            self.error = data["error"]
        duration = data.get("duration")  # a transcription's verbose_json (OpenAI, Groq)
        if isinstance(duration, (int, float)) and not isinstance(duration, bool) and (
                0 < duration < 10**7):  # 0 s for an upload is no duration: estimated instead
            self.duration = float(duration)

    def _retrieved_response(self, usage: Mapping[str, Any] | None) -> dict[str, Any]:
        """A retrieved response: nothing while it runs; once finished, its usage if it was
        never counted here (created by another client), or what its usage adds to the
        estimate it was counted at (a background response), else nothing."""
        assert self.response is not None
        rid, done = self.response
        if not done or not usage or self.unreadable:
            return {}
        before = self.hub.counted(rid)
        if before == (0, 0):
            return {}
        fields = {k: v for k, v in usage_fields(usage).items() if v is not None}
        if before is not None:  # the estimate was counted: only what the usage adds to it
            self.hub.settle(rid)
            fields = {"input_tokens": max(0, _count(fields.get("input_tokens")) - before[0]),
                      "output_tokens": max(0, _count(fields.get("output_tokens")) - before[1])}
        return reported_usage(fields, Estimate(model=self.model or "unknown",
                                               api_method=self.method, input_tokens=0,
                                               output_tokens=0))

    def _audio_seconds(self) -> dict[str, Any]:
        """A transcription or translation without usage (Groq, local Whisper servers): the
        duration its response gave, else seconds estimated from the upload's size, as if it
        were audio at :data:`_AUDIO_BYTES_PER_SECOND` (compressed speech), never 0."""
        if self.duration is not None:
            return {"audio_seconds": self.duration}
        seconds = max(1.0, round(self.request_bytes / _AUDIO_BYTES_PER_SECOND, 3))
        return {"audio_seconds": seconds, "estimated": True,
                "estimate_reason": f"no usage reported: {seconds:g} s of audio estimated from "
                                   f"an upload of {self.request_bytes} bytes"}

    def _error_type(self) -> str:
        error = self.error
        if error:
            kind = error.get("code") or error.get("type")
            if kind:
                return str(kind)
        return {429: "rate_limited"}.get(self.status, f"http_{self.status}")


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


_TOKEN_METHODS = {"chat.completions", "completions", "responses", "embeddings"}
_GENERATING_METHODS = {"chat.completions", "completions", "responses"}
_AUDIO_IN_METHODS = {"audio.transcriptions", "audio.translations"}
#: Bytes per second of the audio a transcription without usage is assumed to be: 32 kbit/s,
#: low-bitrate speech (Opus, MP3). Denser audio (WAV) is charged more than it used, never less
#: than audio at that rate.
_AUDIO_BYTES_PER_SECOND = 4000


class _SSE:
    """Server-sent events of one response: usage is taken from them.

    When we injected ``include_usage``, the caller's stream is given back as the provider
    would have sent it without: the usage-only chunk is dropped, and the ``"usage": null``
    member the provider then adds to every other chunk is cut out of its bytes (nothing else
    of an event is touched). Only events that carry a usage object, and the first one (for
    the model), are JSON-parsed; the others are scanned, not parsed.
    """

    __slots__ = ("buffer", "call", "filtering", "scanned")

    def __init__(self, call: _Call, filtering: bool) -> None:
        self.call = call
        self.filtering = filtering
        self.buffer = b""
        self.scanned = 0  # bytes of ``buffer`` known to hold no event separator

    def feed(self, data: bytes) -> bytes:
        """Take body bytes; return the caller's share of the events they complete."""
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        start = 0
        scan = max(0, self.scanned - 4)  # a blank line may straddle the previous chunk
        while True:
            end = _event_end(buffer, max(scan, start))
            if end < 0:
                break
            out.append(self._event(buffer[start:end]))
            start = scan = end
        self.buffer = buffer[start:]
        self.scanned = len(self.buffer)
        return b"".join(out)

    def flush(self) -> bytes:
        """The body ended: the last event, even without its blank line."""
        rest, self.buffer, self.scanned = self.buffer, b"", 0
        return self._event(rest) if rest else b""

    def _event(self, raw: bytes) -> bytes:
        """Learn from one event; returns what the caller gets of it."""
        call = self.call
        data_at = raw.find(b"data:")
        if data_at < 0:
            return raw
        name = b""
        data_lines = []
        for line in raw.removeprefix(b"\xef\xbb\xbf").splitlines():  # a stream may open with a BOM
            if line.startswith(b"data:"):
                data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
        if data == b"[DONE]":
            return raw
        call.events += 1
        has_usage = _usage_object_in(data)
        if call.response_model and not has_usage and not name.startswith(b"thread.run."):
            return _without_null_usage(raw) if self.filtering else raw  # a content delta
        try:
            event = json.loads(data)
        except ValueError:
            return raw
        if not isinstance(event, dict):
            return raw
        if isinstance(event.get("response"), dict):  # Responses API events
            call._take(event["response"])
            return raw
        call._take(event)
        if not self.filtering:
            return raw
        if isinstance(event.get("usage"), dict) and event.get("choices") == []:
            return b""  # our injected usage-only chunk
        return _without_null_usage(raw)


_USAGE_KEY = b'"usage"'
_JSON_SPACE = b" \t\r\n"
_NULL_USAGE = re.compile(
    rb'(,\s*"usage"\s*:\s*null)(?=\s*[,}])'  # after another member
    rb'|(?<=\{)(\s*"usage"\s*:\s*null\s*,?)'  # the first member
)


def _usage_object_in(data: bytes) -> bool:
    """True when a ``"usage"`` key in the JSON text ``data`` has an object value (a scan,
    not a parse: whitespace and key order as the provider pleases)."""
    at = data.find(_USAGE_KEY)
    while at >= 0:
        i, n = at + len(_USAGE_KEY), len(data)
        while i < n and data[i] in _JSON_SPACE:
            i += 1
        if i < n and data[i] == 58:  # ":"
            i += 1
            while i < n and data[i] in _JSON_SPACE:
                i += 1
            if i < n and data[i] == 123:  # "{"
                return True
        at = data.find(_USAGE_KEY, at + 1)
    return False


def _without_null_usage(raw: bytes) -> bytes:
    """``raw`` without its ``"usage": null`` member (the one that injecting
    ``include_usage`` adds to every chunk); a quoted ``"usage"`` can only be a key, since
    quotes inside JSON strings are escaped."""
    if _USAGE_KEY not in raw:
        return raw
    return _NULL_USAGE.sub(b"", raw, count=1)


# An event ends at a blank line: two line ends in a row, each of CRLF, LF or CR (any mix:
# "\n\r\n" is an LF line end and a CRLF blank line). A CR last in the buffer may be the start
# of a CRLF still on its way, so it waits for the next byte.
_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?=[^\n]))(?:\r\n|\n|\r(?=[^\n]))")


def _event_end(buffer: bytes, start: int = 0) -> int:
    """The index just after the first event of ``buffer`` at or after ``start`` (its blank
    line included), or -1 when no event is complete yet."""
    found = _BLANK_LINE.search(buffer, start)
    return -1 if found is None else found.end()


_BODY_LIMIT = 64 * 1024 * 1024  # a non-stream body kept for its usage, at most


class _Decoder:
    """The content decoder the HTTP library itself picks for a response's
    ``Content-Encoding`` (every coding it supports, in order; unknown ones left as they
    are, as the client does), bytes in and bytes out: httpx's decoders return bytes,
    httpx2's return iterators of bytes."""

    __slots__ = ("_inner",)

    def __init__(self, lib: Any, headers: Any) -> None:
        # A detached response: the caller's own response keeps its own, fresh decoder.
        self._inner = lib.Response(200, headers=headers)._get_content_decoder()

    def decode(self, data: bytes) -> bytes:
        return _joined(self._inner.decode(data))

    def flush(self) -> bytes:
        return _joined(self._inner.flush())


def _joined(out: bytes | Iterable[bytes]) -> bytes:
    return out if isinstance(out, bytes) else b"".join(out)


def _without(headers: Any, *names: str) -> Any:
    copy = headers.copy()
    for name in names:
        if name in copy:
            del copy[name]
    return copy


# ---------------------------------------------------------------------------------- transports
_CLASSES: dict[str, dict[str, Any]] = {}
_CLASSES_LOCK = threading.Lock()


def _classes(lib: Any) -> dict[str, Any]:
    """Transport and stream wrapper classes for one HTTP library (httpx2 or httpx)."""
    with _CLASSES_LOCK:
        found = _CLASSES.get(lib.__name__)
        if found is None:
            found = _CLASSES[lib.__name__] = _build_classes(lib)
        return found


def _build_classes(lib: Any) -> dict[str, Any]:
    class TrackedStream(lib.SyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, call: _Call) -> None:
            self._inner = inner
            self._call = call

        def __iter__(self) -> Iterator[bytes]:
            call = self._call
            for chunk in self._inner:
                out = call.feed(chunk)
                if out:
                    yield out
            tail = call.end_of_body()
            if tail:
                yield tail

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                _finish_sync(self._call)

    class AsyncTrackedStream(lib.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, call: _Call) -> None:
            self._inner = inner
            self._call = call

        async def __aiter__(self) -> AsyncIterator[bytes]:
            call = self._call
            async for chunk in self._inner:
                out = call.feed(chunk)
                if out:
                    yield out
            tail = call.end_of_body()
            if tail:
                yield tail

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                await _finish_async(self._call)

    class TrackingTransport(lib.BaseTransport):  # type: ignore[misc]
        """Wraps the next transport; tracks each request that passes through."""

        def __init__(self, inner: Any, hub: _Hub) -> None:
            self.inner = inner
            self.hub = hub

        def handle_request(self, request: Any) -> Any:
            call, request = _start(self.hub, request, lib)
            if call is not None:
                outer, call.reservation = call.outer_reservation()
                if outer and call.outgrows(call.reservation):
                    self.hub.manager.release(call.reservation)
                    outer = False
                if not outer:
                    call.reservation = _guarded(self.hub, call, lambda: self.hub.manager.acquire(
                        call.workspace_id, call.facts(), scopes=call.scopes))
            try:
                response = self.inner.handle_request(request)
            except BaseException:
                if call is not None:
                    self.hub.manager.release(call.reservation)
                raise
            if call is not None:
                try:
                    response = call.on_response(response)
                    if call.complete:
                        _finish_sync(call)
                    else:
                        response.stream = TrackedStream(response.stream, call)
                except Exception as exc:
                    self.hub.failed("response", exc, call.workspace_id)
                    call.unreadable = True
                    _finish_sync(call)  # settles at the estimate, never uncounted
            return response

        def close(self) -> None:
            self.inner.close()

        def __enter__(self) -> Any:
            self.inner.__enter__()
            return self

        def __exit__(self, *exc_info: Any) -> None:
            self.inner.__exit__(*exc_info)

    class AsyncTrackingTransport(lib.AsyncBaseTransport):  # type: ignore[misc]
        """Async twin of ``TrackingTransport``."""

        def __init__(self, inner: Any, hub: _Hub) -> None:
            self.inner = inner
            self.hub = hub

        async def handle_async_request(self, request: Any) -> Any:
            call, request = _start(self.hub, request, lib)
            if call is not None:
                outer, call.reservation = call.outer_reservation()
                if outer and call.outgrows(call.reservation):
                    await self.hub.manager.arelease(call.reservation)
                    outer = False
                if not outer:
                    try:
                        call.reservation = await self.hub.manager.aacquire(
                            call.workspace_id, call.facts(), scopes=call.scopes)
                    except QuotaHooksError:
                        raise
                    except Exception as exc:  # a bug of ours never stops the call
                        self.hub.failed("acquire", exc, call.workspace_id)
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException:
                if call is not None:
                    await self.hub.manager.arelease(call.reservation)
                raise
            if call is not None:
                try:
                    response = call.on_response(response)
                    if call.complete:
                        await _finish_async(call)
                    else:
                        response.stream = AsyncTrackedStream(response.stream, call)
                except Exception as exc:
                    self.hub.failed("response", exc, call.workspace_id)
                    call.unreadable = True
                    await _finish_async(call)
            return response

        async def aclose(self) -> None:
            await self.inner.aclose()

        async def __aenter__(self) -> Any:
            await self.inner.__aenter__()
            return self

        async def __aexit__(self, *exc_info: Any) -> None:
            await self.inner.__aexit__(*exc_info)

    return {"sync": TrackingTransport, "async": AsyncTrackingTransport}


def _scopes(raw: str | None) -> dict[str, str]:
    """The scopes of a ``kind=value;kind=value`` header (each part URL-quoted)."""
    found: dict[str, str] = {}
    for part in (raw or "").split(";"):
        kind, _, value = part.partition("=")
        if kind and value:
            found[unquote(kind)] = unquote(value)
    return found


def _start(hub: _Hub, request: Any, lib: Any) -> tuple[_Call | None, Any]:
    """Begin tracking a request; strip our headers. Never raises."""
    workspace = request.headers.get(WORKSPACE_HEADER)
    try:
        call = _Call(hub, request, lib)
        request = call.request
    except Exception as exc:
        hub.failed("request", exc, workspace)
        call = None
    for header in _OUR_HEADERS:
        if header in request.headers:
            del request.headers[header]
    return call, request


def _guarded(hub: _Hub, call: _Call, acquire: Any) -> Reservation | None:
    """Run ``acquire``: a refusal (a QuotaHooksError) stops the call, a bug of ours never."""
    try:
        reservation: Reservation | None = acquire()
    except QuotaHooksError:
        raise
    except Exception as exc:
        hub.failed("acquire", exc, call.workspace_id)
        return None
    return reservation


def _final_record(call: _Call) -> UsageRecord | None:
    """The attempt's record (None once recorded). Never raises: if reading what the provider
    sent fails, the attempt is recorded at its estimate, so a bug of ours never lets a call
    through uncounted."""
    try:
        return call.record()
    except Exception as exc:
        call.hub.failed("record", exc, call.workspace_id)
        call.unreadable = True
        try:
            return call.fallback_record()
        except Exception as again:
            call.hub.failed("record", again, call.workspace_id)
            return None


def _finish_sync(call: _Call) -> None:
    record = _final_record(call)
    if record is None:
        call.hub.manager.release(call.reservation)  # recorded already, or unrecordable
        return
    if call.mark is not None:
        call.mark.recorded = True  # the outer run is recorded here: it adds nothing
    call.hub.manager.record(record, call.reservation)
    try:
        _note_limits(call)
    except Exception as exc:
        call.hub.failed("limits", exc, call.workspace_id)


async def _finish_async(call: _Call) -> None:
    record = _final_record(call)
    if record is None:
        await call.hub.manager.arelease(call.reservation)
        return
    if call.mark is not None:
        call.mark.recorded = True
    await call.hub.manager.arecord(record, call.reservation)
    try:
        _note_limits(call)
    except Exception as exc:
        call.hub.failed("limits", exc, call.workspace_id)


_LIMIT_HEADERS = tuple(
    f"x-ratelimit-{kind}-{what}"
    for kind in ("limit", "remaining", "reset") for what in ("requests", "tokens")
)


def _note_limits(call: _Call) -> None:
    """Hand the provider's ``x-ratelimit-*`` headers to the manager: at most once a second
    per workspace and provider (the status shows them; a second is fresh enough), and
    always on a 429."""
    headers = call.headers
    if headers is None or (
        "x-ratelimit-remaining-requests" not in headers
        and "x-ratelimit-remaining-tokens" not in headers
    ):
        return  # the usual case for compatible servers: no scan of every header
    if call.status != 429 and not call.hub.limits_due(call.workspace_id, call.provider):
        return
    limits = {name: headers[name] for name in _LIMIT_HEADERS if name in headers}
    if limits:
        call.hub.manager.note_provider_limits(call.workspace_id, call.provider, limits)


# ---------------------------------------------------------------------------------- public API
def _wrap_http_client(http_client: Any, manager: QuotaManager, inject: bool) -> None:
    """Wrap every transport of ``http_client`` (its default and its mounts) once."""
    lib = _library_of(http_client)
    is_async = isinstance(http_client, lib.AsyncClient)
    wrapper = _classes(lib)["async" if is_async else "sync"]
    current: Any = http_client._transport
    if isinstance(current, wrapper):
        if current.hub.manager is not manager:
            raise ConfigurationError(
                "this OpenAI client's http_client is already tracked by another QuotaManager; "
                "give each OpenAI client its own http_client"
            )
        return
    hub = _Hub(manager, inject)
    http_client._transport = wrapper(current, hub)
    http_client._mounts = {
        pattern: (None if transport is None else wrapper(transport, hub))
        for pattern, transport in http_client._mounts.items()
    }


def _library_of(http_client: Any) -> Any:
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
