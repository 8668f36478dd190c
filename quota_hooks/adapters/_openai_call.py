"""One HTTP attempt of an OpenAI-shaped API, sans I/O: what it asks for and what it used.

An :class:`OpenAICall` is built from a request's verb, URL and headers
(:meth:`OpenAICall.read_json` or :meth:`~OpenAICall.read_form` reads its body), turns what
it learned into facts for the manager (:meth:`~OpenAICall.facts`), is fed the response body
as it goes to the caller (:meth:`~OpenAICall.respond`, :meth:`~OpenAICall.feed`,
:meth:`~OpenAICall.end`), and ends as one :class:`~quota_hooks.UsageRecord`
(:meth:`~OpenAICall.record`). It does no I/O and knows no HTTP library: the transports of
:mod:`quota_hooks.adapters.openai` drive it, sync or async, and talk to the manager.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote

from ..context import WorkspaceContext
from ..storage.base import Reservation
from ..usage import Estimate, UsageRecord, reported_usage
from ._pairing import RunMark, claim
from ._sse import EventStream
from ._usage import usage_fields

__all__ = ["Decoder", "OpenAICall", "RunMemory", "api_method_for", "parse_scopes"]

WORKSPACE_HEADER = "x-quota-hooks-workspace"
SCOPES_HEADER = "x-quota-hooks-scopes"
#: What ``track_openai`` was given: the workspace and scopes of a call that names none
#: itself (in ``x-quota-hooks-workspace``) and runs in no ``quota_hooks.workspace()`` block.
DEFAULT_WORKSPACE_HEADER = "x-quota-hooks-default-workspace"
DEFAULT_SCOPES_HEADER = "x-quota-hooks-default-scopes"
#: Every header of ours: the transport strips them before a request leaves the process.
OUR_HEADERS = (WORKSPACE_HEADER, SCOPES_HEADER, DEFAULT_WORKSPACE_HEADER, DEFAULT_SCOPES_HEADER)
_PARSE_LIMIT = 16 * 1024 * 1024  # response bodies up to this size are parsed whole
_BODY_LIMIT = 64 * 1024 * 1024  # a non-stream body kept for its usage, at most
_RUN_MEMORY = 10_000
_TERMINAL_RUN_STATES = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
_TERMINAL_BATCH_STATES = frozenset({"completed", "failed", "cancelled", "expired"})
#: Calls that hand back a stored response, finished or not: its usage counts once (a
#: background response's, on top of its estimate), whichever of them sees it finished.
_RESPONSE_READS = frozenset({"responses.retrieve", "responses.cancel"})
_TOKEN_METHODS = frozenset({"chat.completions", "completions", "responses", "embeddings"})
_GENERATING_METHODS = frozenset({"chat.completions", "completions", "responses"})
_AUDIO_IN_METHODS = frozenset({"audio.transcriptions", "audio.translations"})
_STREAM_USAGE_METHODS = frozenset({"chat.completions", "completions"})
#: Bytes per second of the audio a transcription without usage is assumed to be: 32 kbit/s,
#: low-bitrate speech (Opus, MP3). Denser audio (WAV) is charged more than it used, never less
#: than audio at that rate.
_AUDIO_BYTES_PER_SECOND = 4000


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
#: a response's once, see :meth:`OpenAICall.record`).
_HOUSEKEEPING = frozenset(name for _, name, _ in _ITEMS)
#: Path segments of a base URL that are skipped to find a route: ``api/v1``, ``v1beta/openai``,
#: Cloudflare's ``client/v4/accounts/<id>/ai/v1`` (6), Vertex AI's
#: ``v1/projects/<p>/locations/<l>/endpoints/openapi`` (7), with room to spare; the bound only
#: keeps a path of thousands of segments from costing thousands of matches.
_MAX_PREFIX_SEGMENTS = 12


def api_method_for(method: str, path: str) -> str:
    """The API method of an OpenAI HTTP call, from its verb and path (``chat.completions``,
    ``images.generate``, ``responses.retrieve`` ...), under any base path (``/v1``, Azure's
    deployments, OpenRouter's ``/api/v1``, Gemini's ``/v1beta/openai``): the first known route
    at the end of the path wins. An unknown path gives its first segment, never an error.
    Remembered for the paths of ordinary length (a client calls a few, again and again)."""
    if len(path) <= 256:
        return _remembered_method(method, path)
    return _api_method(method, path)


def _api_method(method: str, path: str) -> str:
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


_remembered_method = functools.lru_cache(maxsize=512)(_api_method)


# ---------------------------------------------------------------------------------- JSON
def _find_key(body: bytes, key: str) -> object:
    """The value of the last top-level-looking ``"key":`` in a JSON body too large to parse."""
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


def _object(content: bytes) -> dict[str, object] | None:
    """The JSON object ``content``, or None (not JSON, not an object, or nested too deep for
    the parser: the SDK sends what it can encode, which can be deeper than it can read)."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


# ---------------------------------------------------------------------------------- memory
class RunMemory:
    """What was counted of objects whose usage comes later or again (runs, batches, stored
    responses), shared by every call of one HTTP client: the last 10,000 ids."""

    def __init__(self) -> None:
        self._runs: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def counted(self, object_id: str, settled: tuple[int, int] = (0, 0)
                ) -> tuple[int, int] | None:
        """What was already counted for a run, batch or response (its input and output
        tokens, ``(0, 0)`` when its own usage was), or None the first time: it is then
        remembered at ``settled``."""
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


class Decoder(Protocol):
    """A content decoder, bytes in and bytes out (gzip, br, zstd ...)."""

    def decode(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


#: ``(stage, error, workspace)``: a tracking failure, for the manager's health.
FailureNote = Callable[[str, BaseException, str | None], None]
#: The manager's rule that turns a call's facts into token counts, for its workspace.
Estimator = Callable[[str, Estimate], Estimate]


# ---------------------------------------------------------------------------------- the call
class OpenAICall:
    """What one HTTP attempt taught us, from its request to the end of its body."""

    __slots__ = (
        "_body", "_body_size", "_characters", "_decoder", "_duration", "_error", "_estimate",
        "_estimator", "_events", "_failed", "_image_quality", "_image_size", "_images",
        "_images_made", "_max_output", "_memory", "_prompt_size", "_prompts", "_recorded",
        "_request_bytes",
        "_response", "_response_model", "_run", "_service_tier", "_sse", "_started", "_usage",
        "attempt", "complete", "inject", "mark", "method", "model", "provider",
        "request_id", "reservation", "scopes", "server", "status", "stream", "unreadable",
        "workspace_id",
    )

    def __init__(
        self,
        *,
        verb: str,
        path: str,
        server: str,
        provider: str,
        headers: Mapping[str, str],
        context: WorkspaceContext | None,
        memory: RunMemory,
        estimator: Estimator,
        failed: FailureNote,
    ) -> None:
        self._started = time.perf_counter()
        self._memory, self._estimator, self._failed = memory, estimator, failed
        # Who pays: the call's own header, then the workspace() block it runs in, then what
        # track_openai was given. The scopes of whichever gave the workspace (the block's, or
        # track_openai's), with the call's own scopes header over them, kind by kind.
        named = headers.get(WORKSPACE_HEADER)
        self.scopes: dict[str, str]
        if not named and context is not None:
            self.workspace_id = context.workspace_id
            self.scopes = dict(context.scopes)
        else:
            # The call's own header is the id as written; track_openai's is URL-quoted.
            self.workspace_id = named or unquote(headers.get(DEFAULT_WORKSPACE_HEADER)
                                                 or "default")
            self.scopes = parse_scopes(headers.get(DEFAULT_SCOPES_HEADER))
        self.scopes.update(parse_scopes(headers.get(SCOPES_HEADER)))
        try:
            self.attempt = int(headers.get("x-stainless-retry-count") or 0)
        except ValueError:
            self.attempt = 0
        self.provider = provider
        self.server = server
        self.method = api_method_for(verb, path)
        self.model: str | None = None
        self.stream = False
        self.inject = False
        """True when the request was given ``stream_options.include_usage`` by us."""
        self.reservation: Reservation | None = None
        self.mark: RunMark | None = None
        """The outer run (LangChain) this attempt belongs to, if any."""
        self.status = 0
        self.request_id: str | None = None
        self.unreadable = False
        """True once reading the body failed: the attempt settles at its estimate."""
        self.complete = False
        """True when the whole body was known when the response arrived (read already)."""
        self._max_output: int | None = None
        self._prompt_size = 0  # bytes of the JSON request body, which the manager estimates from
        self._prompts = 1
        self._request_bytes = 0
        self._characters = 0
        self._duration: float | None = None  # seconds of audio a transcription's response gave
        self._image_size: str | None = None
        self._image_quality: str | None = None
        self._images = 1
        self._images_made = 0  # images the response holds, when it was read
        self._estimate: Estimate | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._usage: Mapping[str, Any] | None = None
        self._response_model: str | None = None
        self._service_tier: str | None = None
        self._events = 0
        self._run: tuple[str, Mapping[str, Any]] | None = None  # a finished run or batch
        self._response: tuple[str, bool] | None = None  # a Responses object's id, finished
        self._error: Mapping[str, object] | None = None
        self._sse: EventStream | None = None
        self._decoder: Decoder | None = None
        self._recorded = False

    # ---------------------------------------------------------------- request
    def read_form(self, fields: Iterable[tuple[str, str]], upload_bytes: int) -> None:
        """Learn from a multipart request's plain fields (audio, image edits); the files
        are never read, only the upload's size (for a transcription without usage)."""
        for name, value in fields:
            if name == "model":
                self.model = value
            elif name == "size":
                self._image_size = value
            elif name == "quality":
                self._image_quality = value
            elif name == "n":
                self._images = _images_asked(value)
        self._request_bytes = upload_bytes

    def read_json(self, content: bytes, *, inject_stream_usage: bool) -> bytes | None:
        """Learn from a JSON request body. Returns the body to send instead when a stream
        was given ``stream_options.include_usage`` (see :attr:`inject`), else None."""
        # Its size is what the prompt is estimated from, even when it cannot be read.
        self._request_bytes = self._prompt_size = len(content)
        body = _object(content) if content else None
        if body is None:
            return None
        model = body.get("model")
        self.model = model if isinstance(model, str) else None
        self.stream = body.get("stream") is True
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._max_output = value
                break
        prompt = body.get("prompt")
        if self.method == "completions" and isinstance(prompt, list) and prompt and not isinstance(
            prompt[0], int
        ):
            self._prompts = len(prompt)  # a legacy completions request with several prompts
        if self.method == "audio.speech":
            self._characters = len(str(body.get("input") or ""))
        elif self.method.startswith("images."):
            size, quality, n = body.get("size"), body.get("quality"), body.get("n")
            self._image_size = size if isinstance(size, str) else None
            self._image_quality = quality if isinstance(quality, str) else None
            self._images = _images_asked(n)
        options = body.get("stream_options")
        if not (self.stream and inject_stream_usage and self.method in _STREAM_USAGE_METHODS
                and not (isinstance(options, dict) and options.get("include_usage"))):
            return None
        self.inject = True
        if options is None and "stream_options" not in body and json.detect_encoding(
                content) == "utf-8":
            # One member added before the closing brace: the caller's bytes stay as they are
            # (no second serialisation of megabytes of messages).
            close = content.rstrip().rfind(b"}")
            return content[:close] + b',"stream_options":{"include_usage":true}' + content[close:]
        options = {**options, "include_usage": True} if isinstance(options, dict) else {
            "include_usage": True}
        return json.dumps({**body, "stream_options": options}, separators=(",", ":")).encode()

    # ---------------------------------------------------------------- admission
    def facts(self) -> Estimate:
        """What this request asks for, as facts (its model, method, body size, requested
        output, images, characters to speak): the manager turns them into token counts."""
        generating = self.method in _GENERATING_METHODS
        images = self._images if self.method.startswith("images.") else 0
        return Estimate(model=self.model or "unknown", api_method=self.method,
                        provider=self.provider, prompt_size=self._prompt_size,
                        max_tokens=self._max_output if generating else None,
                        images=images, image_size=self._image_size,
                        image_quality=self._image_quality, characters=self._characters)

    def estimate(self) -> Estimate:
        """What this request is expected to use (its facts with the manager's token counts,
        for the workspace that pays), where it settles when its usage cannot be trusted."""
        if self._estimate is None:
            self._estimate = self._estimator(self.workspace_id, self.facts())
        return self._estimate

    def claim_outer(self) -> tuple[Reservation | None, Reservation | None]:
        """Pairing with an outer run (see :mod:`quota_hooks.adapters._pairing`): returns the
        outer run's reservation when this attempt takes it over, and an outer reservation
        this attempt outgrew, which the caller releases; ``(None, None)`` when there is no
        outer run, or it holds no reservation for this attempt (a retry).

        An attempt reserves for itself unless it took one over. It outgrows the outer run's
        reservation when it is clearly bigger (that counted message text only: tool schemas,
        images and system parts make requests bigger), so that pairing never lets a call
        past a limit the transport alone would enforce. An attempt that belongs to an outer
        run is charged to that run's workspace and scopes either way."""
        found = claim(self.model, self.method, self.attempt, self._prompts)
        mark = self.mark = found.mark
        if mark is None:
            return None, None
        if mark.workspace_id is not None:  # the outer run says who pays
            self._estimate = None
            self.workspace_id = mark.workspace_id
            self.scopes = dict(mark.scopes)
        held = found.reservation
        if held is None:
            return None, None
        if self.estimate().tokens > 2 * held.delta.tokens + 256:
            return None, held
        return held, None

    # ---------------------------------------------------------------- response
    def respond(self, status: int, headers: Mapping[str, str]) -> bool:
        """The response arrived: its status and headers. Returns True when the caller is to
        get our filtered bytes (an injected usage chunk to cut from an event stream), which
        are plain: the caller's response then has no ``Content-Encoding`` or length."""
        self.status = status
        self.request_id = headers.get("x-request-id")
        content_type = headers.get("content-type", "").lower()
        # An event stream as the SDK sees one: by its type, or because the request asked for
        # a stream and a success came back that is not JSON (ndjson, text/plain, no type).
        if "event-stream" in content_type or (self.stream and 200 <= status < 300
                                               and not content_type.startswith("application/json")):
            self.stream = True
            self._sse = EventStream(self, filtering=self.inject)
        return self.filtering

    @property
    def filtering(self) -> bool:
        """True when the caller gets our filtered (and decoded) bytes, not the wire's."""
        return self._sse is not None and self._sse.filtering

    def decode_with(self, decoder: Decoder) -> None:
        """Read the body through ``decoder`` (its ``Content-Encoding``)."""
        self._decoder = decoder

    def take_whole(self, content: bytes) -> bytes:
        """The whole (decoded) body, known at once: an inner transport read it. Returns
        the caller's share of it (the filtered stream)."""
        self.complete = True
        return self._read_plain(content) + self._take_end()

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk of the body on its way to the caller; return what the caller gets."""
        try:
            plain = chunk if self._decoder is None else self._decoder.decode(chunk)
        except Exception as exc:  # a corrupt body, which the client's own decoder rejects too
            self._lost(exc)
            self._decoder = None
            return chunk
        shown = plain
        if not self.unreadable or self._sse is not None:  # a stream is still filtered
            try:
                shown = self._read_plain(plain)
            except Exception as exc:  # a bug of ours: the caller still gets the whole body
                self._lost(exc)
        return shown if self.filtering else chunk

    def end(self) -> bytes:
        """The body ended: the decoder's tail, and what SSE filtering held back."""
        try:
            tail = b"" if self._decoder is None else self._decoder.flush()
        except Exception as exc:
            self._lost(exc)
            return b""
        shown = tail
        if not self.unreadable or self._sse is not None:
            try:
                shown = self._read_plain(tail) + self._take_end()
            except Exception as exc:
                self._lost(exc)
        return shown if self.filtering else b""

    def _read_plain(self, plain: bytes) -> bytes:
        """Learn from decoded body bytes; returns the caller's share (the filtered stream)."""
        if self._sse is not None:
            return self._sse.feed(plain)
        if plain and self._body_size <= _BODY_LIMIT:
            self._body.append(plain)
            self._body_size += len(plain)
        return plain

    def _take_end(self) -> bytes:
        return self._sse.flush() if self._sse is not None else b""

    def _lost(self, exc: BaseException) -> None:
        """Reading the body failed (a corrupt encoding, a bug of ours): the rest goes to the
        caller untouched, and the attempt settles at its estimate (see :meth:`record`)."""
        self.unreadable = True
        self._failed("read", exc, self.workspace_id)

    # The reader of the event stream (see quota_hooks.adapters._sse.Reader).
    @property
    def response_model(self) -> str | None:
        return self._response_model

    def event(self) -> None:
        self._events += 1

    def lost(self, exc: BaseException) -> None:
        self._lost(exc)

    def take(self, data: Mapping[str, object]) -> None:
        """Learn from one JSON object of the response (a whole body or one SSE event)."""
        model = data.get("model")
        if isinstance(model, str) and model:
            self._response_model = model
        tier = data.get("service_tier")
        if isinstance(tier, str) and tier:
            self._service_tier = tier  # the tier actually served is the one billed
        kind, usage = data.get("object"), data.get("usage")
        if kind in ("thread.run", "batch"):
            # A cancelled or expired batch is billed for the requests it finished.
            done = _TERMINAL_RUN_STATES if kind == "thread.run" else _TERMINAL_BATCH_STATES
            if data.get("status") in done and isinstance(usage, dict):
                self._run = (f"{kind}:{data.get('id')}", usage)
            return
        rid = data.get("id")
        if kind == "response" and isinstance(rid, str):
            self._response = (rid, data.get("status") in _TERMINAL_RUN_STATES)
        error = data.get("error")
        if isinstance(usage, dict):
            self._usage = usage
        elif self.status >= 400 and isinstance(error, dict):
            self._error = error
        images = data.get("data")
        if self.method.startswith("images.") and isinstance(images, list) and images:
            self._images_made = len(images)  # what is billed, however ``n`` was written
        duration = data.get("duration")  # a transcription's verbose_json (OpenAI, Groq)
        if isinstance(duration, (int, float)) and not isinstance(duration, bool) and (
                0 < duration < 10**7):  # 0 s for an upload is no duration: estimated instead
            self._duration = float(duration)

    def _parse_body(self) -> None:
        """Learn from the whole (non-stream) body, parsed once."""
        if not self._body:
            return
        body = b"".join(self._body) if len(self._body) > 1 else self._body[0]
        self._body = []
        body = body.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()  # a UTF-8 BOM is not JSON
        if not body.startswith(b"{"):
            return
        data: Mapping[str, object] | None
        if len(body) <= _PARSE_LIMIT:
            data = _object(body)
        else:
            data = {"usage": _find_key(body, "usage"), "model": _find_key(body, "model")}
        if data is not None:
            self.take(data)

    # ---------------------------------------------------------------- the record
    def record(self, now: float) -> UsageRecord | None:
        """The record of this attempt, at ``now`` (the manager's clock); None after the
        first call.

        Token usage is the provider's when it can be trusted; otherwise (missing, null,
        untrusted, unreadable, a stream closed before its usage) the attempt settles at its
        estimate (:func:`~quota_hooks.usage.reported_usage`), never at 0.
        """
        if self._recorded:
            return None
        self._recorded = True
        latency = (time.perf_counter() - self._started) * 1000
        if self._sse is None and not self.unreadable:
            self._parse_body()
        usage = self._usage
        method = self.method
        if self._run is not None and self._memory.counted(self._run[0]) is None:
            usage = self._run[1]  # a run's tokens count once, however often it is polled
        success = 200 <= self.status < 400
        fields: dict[str, Any] = {}
        if success and method in _RESPONSE_READS and self._response is not None:
            fields = self._retrieved_response(usage)
        elif method in _HOUSEKEEPING and not (self._run and method == "batches"):
            pass  # no tokens: a stored object's own call counted them
        elif success and method in _TOKEN_METHODS:
            reported = usage_fields(usage) if usage and not self.unreadable else None
            fields = reported_usage(reported, self.estimate, observed_output=self._events)
            if self.unreadable and reported is None:
                fields["estimate_reason"] = "the response body could not be read"
            if method == "responses" and self._response is not None:
                # Counted now; a background response (queued, no usage yet) at its
                # estimate, topped up when it is retrieved finished.
                rid, done = self._response
                settled = (0, 0) if done else (fields.get("input_tokens", 0),
                                               fields.get("output_tokens", 0))
                self._memory.counted(rid, settled)
        elif usage and not self.unreadable:
            fields = {k: v for k, v in usage_fields(usage).items() if v is not None}
            if method == "batches":
                fields["batch"] = True  # a batch's tokens, at the Batch API's price
        elif success and method == "audio.speech":
            fields["characters"] = self._characters
        elif success and method in _AUDIO_IN_METHODS:
            fields = self._audio_seconds()
        elif success and method.startswith("images.") and (self._body_size or self.complete):
            fields["images"] = self._images_made or self._images
            fields["image_size"] = self._image_size
            fields["image_quality"] = self._image_quality
        return UsageRecord(
            workspace_id=self.workspace_id,
            scopes=self.scopes,
            provider=self.provider,
            source="openai",
            timestamp=datetime.fromtimestamp(now, UTC),
            model=self._response_model or self.model or "unknown",
            api_method=method,
            latency_ms=latency,
            success=success,
            status_code=self.status,
            error_type=None if success else self._error_type(),
            request_id=self.request_id,
            stream=self.stream,
            attempt=self.attempt,
            service_tier=self._service_tier,
            server_address=self.server,
            **fields,
        )

    def unanswered_record(self, error: BaseException, now: float) -> UsageRecord | None:
        """The record of an attempt that may have reached the provider but got no response
        (a read timeout, a reset connection, a cancellation): a failure that settles at its
        estimate (the provider may have run it, and bills it if it did), at least at what
        its reservation held. None after the first record."""
        if self._recorded:
            return None
        self._recorded = True
        name = type(error).__name__
        fields: dict[str, Any] = {"invalid_fields": ("response",)}  # settles at least at the hold
        if self.method in _TOKEN_METHODS:
            fields |= reported_usage(None, self.estimate)
            fields["estimate_reason"] = (
                f"no response arrived ({name}): the request may have reached the provider")
        return UsageRecord(
            workspace_id=self.workspace_id, scopes=self.scopes, provider=self.provider,
            source="openai", model=self.model or "unknown", api_method=self.method,
            timestamp=datetime.fromtimestamp(now, UTC),
            latency_ms=(time.perf_counter() - self._started) * 1000, success=False,
            status_code=None, error_type=name, stream=self.stream, attempt=self.attempt,
            server_address=self.server, **fields,
        )

    def fallback_record(self, now: float) -> UsageRecord:
        """The attempt at its estimate, for when :meth:`record` itself failed."""
        fields = reported_usage(None, self.estimate(), observed_output=self._events)
        fields["estimate_reason"] = "tracking failed reading the response"
        return UsageRecord(
            workspace_id=self.workspace_id, scopes=self.scopes, provider=self.provider,
            source="openai", model=self.model or "unknown", api_method=self.method,
            status_code=self.status or None, success=not self.status or self.status < 400,
            timestamp=datetime.fromtimestamp(now, UTC),
            attempt=self.attempt, server_address=self.server, **fields,
        )

    def _retrieved_response(self, usage: Mapping[str, Any] | None) -> dict[str, Any]:
        """A retrieved response: nothing while it runs; once finished, its usage if it was
        never counted here (created by another client), or what its usage adds to the
        estimate it was counted at (a background response), else nothing."""
        assert self._response is not None
        rid, done = self._response
        if not done or not usage or self.unreadable:
            return {}
        before = self._memory.counted(rid)
        if before == (0, 0):
            return {}
        fields = {k: v for k, v in usage_fields(usage).items() if v is not None}
        if before is not None:  # the estimate was counted: only what the usage adds to it
            self._memory.settle(rid)
            fields = {"input_tokens": max(0, _count(fields.get("input_tokens")) - before[0]),
                      "output_tokens": max(0, _count(fields.get("output_tokens")) - before[1])}
        return reported_usage(fields, Estimate(model=self.model or "unknown",
                                               api_method=self.method, input_tokens=0,
                                               output_tokens=0))

    def _audio_seconds(self) -> dict[str, Any]:
        """A transcription or translation without usage (Groq, local Whisper servers): the
        duration its response gave, else seconds estimated from the upload's size, as if it
        were audio at :data:`_AUDIO_BYTES_PER_SECOND` (compressed speech), never 0."""
        if self._duration is not None:
            return {"audio_seconds": self._duration}
        seconds = max(1.0, round(self._request_bytes / _AUDIO_BYTES_PER_SECOND, 3))
        return {"audio_seconds": seconds, "estimated": True,
                "estimate_reason": f"no usage reported: {seconds:g} s of audio estimated from "
                                   f"an upload of {self._request_bytes} bytes"}

    def _error_type(self) -> str:
        error = self._error
        if error:
            kind = error.get("code") or error.get("type")
            if kind:
                return str(kind)
        return {429: "rate_limited"}.get(self.status, f"http_{self.status}")


def _images_asked(value: object) -> int:
    """The ``n`` of an image request, as the server reads it (``4``, ``4.0``, ``"4"``), at
    least 1 (a value no server would read as a count: 1, the API's default)."""
    try:
        n = float(value) if isinstance(value, (int, float, str)) and not isinstance(
            value, bool) else 1.0
    except ValueError:
        return 1
    return int(n) if n.is_integer() and 1 <= n <= 10_000 else 1


def _count(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


def parse_scopes(raw: str | None) -> dict[str, str]:
    """The scopes of a ``kind=value;kind=value`` header (each part URL-quoted)."""
    found: dict[str, str] = {}
    for part in (raw or "").split(";"):
        kind, _, value = part.partition("=")
        if kind and value:
            found[unquote(kind)] = unquote(value)
    return found

