"""FakeOpenAI: an offline, OpenAI-compatible server, as an httpx/httpx2 transport or on a socket.

Public through :mod:`quota_hooks.testing`. Its payloads follow the real API's shapes field by
field, with usage that the caller configures, so that tests can assert exact token totals.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["ENCODINGS", "FakeOpenAI", "FakeReply", "FakeUsage"]

#: The content encodings FakeOpenAI can send (``br`` needs ``brotli``, ``zstd`` ``zstandard``).
ENCODINGS = ("gzip", "deflate", "br", "zstd")
Split = Literal["event", "odd"] | int

_JSON = {"content-type": "application/json"}
_SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
_TERMINAL_RUN = "completed"


@dataclass
class FakeUsage:
    """The usage FakeOpenAI reports for each call."""

    input_tokens: int = 20
    output_tokens: int = 10
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass
class FakeReply:
    """One HTTP answer: status, headers and the body as chunks."""

    status: int
    headers: dict[str, str]
    chunks: list[bytes]


@dataclass
class _Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    """An offline OpenAI API with realistic payloads and configurable usage.

    Use it as a transport::

        fake = FakeOpenAI(usage=FakeUsage(input_tokens=12, output_tokens=5))
        client = OpenAI(api_key="test", base_url="http://fake/v1",
                        http_client=httpx2.Client(transport=fake.transport()))

    or on a real socket: ``with fake.serve() as base_url: OpenAI(base_url=base_url, ...)``.

    It answers chat completions, completions and responses (streamed or not), embeddings,
    images, audio, moderations, models, files, and assistant runs (``run_polls`` polls before a
    run completes). ``fail_next(429, times=2)`` answers the next calls with errors carrying
    ``retry-after`` and ``x-ratelimit-*`` headers.

    The wire, like a provider behind a CDN:

    * ``compress="gzip"`` (or ``"deflate"``, ``"br"``, ``"zstd"``) compresses every body the
      client accepts in that encoding (its ``Accept-Encoding``), streams flushed event by
      event; ``force_compress=True`` compresses whatever the client accepts, as a misbehaving
      proxy does.
    * ``chunked``: ``True`` sends every body with ``Transfer-Encoding: chunked``, ``False``
      with ``Content-Length``; ``None`` (default) chunks event streams only.
    * ``split``: ``"event"`` (default) writes a stream one event per write; ``"odd"`` cuts the
      bytes on the wire (compressed or not) at uneven places (1, 2, 3, 5, 8, 13 ... bytes,
      across event and line boundaries); a number cuts them in pieces of that size.

    ``raw_usage={"prompt_tokens": None, ...}`` sends that usage object, as it is, in place of
    the one built from ``usage`` (chat, completions and responses): for tests of the usage
    a provider gets wrong. ``created=`` fixes every object's creation time (two servers then
    send equal bodies, byte for byte, compressed too).
    """

    def __init__(
        self,
        usage: FakeUsage | None = None,
        *,
        reply: str = "Hello from FakeOpenAI, a test double.",
        chunks: int = 5,
        run_polls: int = 2,
        ratelimit_headers: bool = True,
        compress: str | None = None,
        force_compress: bool = False,
        chunked: bool | None = None,
        split: Split = "event",
        raw_usage: dict[str, Any] | None = None,
        created: int | None = None,
    ) -> None:
        if compress is not None and compress not in ENCODINGS:
            raise ValueError(f"compress must be one of {ENCODINGS} or None, got {compress!r}")
        if compress is not None:
            _compressor(compress)  # a missing library is an error now, not in a server thread
        if not (split in ("event", "odd") or (type(split) is int and split > 0)):
            raise ValueError(f"split must be 'event', 'odd' or a size > 0, got {split!r}")
        self.compress = compress
        self.force_compress = force_compress
        self.chunked = chunked
        self.split = split
        self.usage = usage or FakeUsage()
        self.raw_usage = raw_usage
        self.created = created
        self.reply = reply
        self.chunks = max(1, chunks)
        self.run_polls = run_polls
        self.ratelimit_headers = ratelimit_headers
        #: Every request seen: ``(method, path, json body or None, headers)`` (no Authorization).
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []
        self._failures: deque[_Failure] = deque()
        self._runs: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ configuration
    def fail_next(self, status: int = 429, *, times: int = 1, retry_after: float = 0.0) -> None:
        """Answer the next ``times`` requests with ``status`` (429: rate limited)."""
        headers = {
            "retry-after": f"{retry_after:g}",
            "retry-after-ms": str(int(retry_after * 1000)),
        }
        if status == 429:
            headers.update(
                {
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": "1s",
                }
            )
        with self._lock:
            self._failures.extend(_Failure(status, headers) for _ in range(times))

    # ------------------------------------------------------------------ transports
    def _created(self) -> int:
        """The ``created`` time of an object: ``created=`` when given, else now."""
        return int(time.time()) if self.created is None else self.created

    def transport(self, library: str = "httpx2") -> Any:
        """A mock transport (sync and async) for ``httpx2`` or the legacy ``httpx``."""
        if library == "httpx2":
            import httpx2 as lib
        elif library == "httpx":
            import httpx as lib  # type: ignore[no-redef]
        else:
            raise ValueError(f"library must be 'httpx2' or 'httpx', got {library!r}")
        fake = self

        class _Stream(lib.SyncByteStream, lib.AsyncByteStream):
            def __init__(self, parts: list[bytes]) -> None:
                self._parts = parts

            def __iter__(self) -> Iterator[bytes]:
                yield from self._parts

            async def __aiter__(self) -> AsyncIterator[bytes]:
                for part in self._parts:
                    yield part

        def handler(request: Any) -> Any:
            body = request.read()
            headers = dict(request.headers)
            answer = fake.wire(fake.handle(request.method, str(request.url), headers, body),
                               headers.get("accept-encoding", ""))
            return lib.Response(
                answer.status, headers=answer.headers, stream=_Stream(answer.chunks)
            )

        return lib.MockTransport(handler)

    def serve(self, host: str = "127.0.0.1") -> _Server:
        """Serve on a real socket on ``host`` (loopback); a context manager giving the base URL
        (``http://127.0.0.1:PORT/v1``)."""
        return _Server(self, host)

    def wire(self, reply: FakeReply, accept_encoding: str = "") -> FakeReply:
        """``reply`` as it goes on the wire: compressed (see the class doc) when the client's
        ``accept_encoding`` allows it, and cut into the writes of ``split``."""
        headers = dict(reply.headers)
        chunks = list(reply.chunks)
        accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
        encoding = self.compress
        if encoding is not None and encoding not in accepted:
            encoding = None
            if self.force_compress:
                encoding = next((e for e in ENCODINGS if e in accepted), self.compress)
        if encoding is not None and reply.status != 204 and any(chunks):
            compressor = _compressor(encoding)
            chunks = [compressor.push(chunk) for chunk in chunks]
            chunks[-1] += compressor.finish()
            headers["content-encoding"] = encoding
            headers["vary"] = "Accept-Encoding"
        if self.split != "event":
            chunks = _cut(b"".join(chunks), self.split)
        return FakeReply(reply.status, headers, [c for c in chunks if c] or [b""])

    # ------------------------------------------------------------------ the API
    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> FakeReply:
        """Answer one request."""
        path = urlsplit(url).path
        path = re.sub(r"^/openai/deployments/[^/]+", "", path)  # Azure
        if "/v1/" in path:  # any prefix before the API version: /openai/v1, /api/v1 ...
            path = path[path.index("/v1/") + 3:]
        payload: Any = None
        if body and headers.get("content-type", "").startswith("application/json"):
            payload = json.loads(body)
        elif body and "multipart/form-data" in headers.get("content-type", ""):
            payload = _form_fields(body)
        shown = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "api-key")}
        with self._lock:
            self.requests.append((method, path, payload, shown))
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            return self._error(failure)
        payload = payload if isinstance(payload, dict) else {}
        return self._route(method, path, payload)

    def _route(self, method: str, path: str, body: dict[str, Any]) -> FakeReply:
        model = str(body.get("model", "gpt-4o-mini"))
        if path == "/chat/completions":
            if body.get("stream"):
                include = (body.get("stream_options") or {}).get("include_usage", False)
                return self._sse(self._chat_chunks(model, include))
            return self._json(self._chat(model))
        if path == "/completions":
            return self._json(self._completion(model))
        if path == "/responses":
            if body.get("stream"):
                return self._sse(self._response_events(model))
            return self._json(self._response(model))
        if path == "/embeddings":
            inputs = body.get("input", "")
            count = len(inputs) if isinstance(inputs, list) else 1
            return self._json(
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.0125, -0.25, 0.5]}
                        for i in range(count)
                    ],
                    "model": model,
                    "usage": {
                        "prompt_tokens": self.usage.input_tokens,
                        "total_tokens": self.usage.input_tokens,
                    },
                }
            )
        if path in ("/images/generations", "/images/edits", "/images/variations"):
            n = int(float(body.get("n") or 1))  # a form sends "1.0" as written
            created = self._created()
            if model.startswith("gpt-image"):
                return self._json(
                    {
                        "created": created,
                        "data": [{"b64_json": "aGVsbG8="} for _ in range(n)],
                        "usage": {
                            "input_tokens": self.usage.input_tokens,
                            "output_tokens": self.usage.output_tokens,
                            "total_tokens": self.usage.input_tokens + self.usage.output_tokens,
                            "input_tokens_details": {
                                "text_tokens": self.usage.input_tokens,
                                "image_tokens": 0,
                            },
                        },
                    }
                )
            return self._json(
                {
                    "created": created,
                    "data": [
                        {"url": f"https://fake.invalid/img/{i}.png", "revised_prompt": "a cat"}
                        for i in range(n)
                    ],
                }
            )
        if path == "/audio/speech":
            return FakeReply(200, {"content-type": "audio/mpeg"}, [b"ID3\x03fake-mp3-bytes"])
        if path in ("/audio/transcriptions", "/audio/translations"):
            if model == "whisper-1":
                usage: dict[str, Any] = {"type": "duration", "seconds": 12.5}
            else:
                usage = {
                    "type": "tokens",
                    "input_tokens": self.usage.input_tokens,
                    "output_tokens": self.usage.output_tokens,
                    "total_tokens": self.usage.input_tokens + self.usage.output_tokens,
                    "input_token_details": {"audio_tokens": self.usage.input_tokens},
                }
            return self._json({"text": "hello world", "usage": usage})
        if path == "/moderations":
            return self._json(
                {
                    "id": f"modr-{next(self._ids)}",
                    "model": "omni-moderation-latest",
                    "results": [{"flagged": False, "categories": {}, "category_scores": {}}],
                }
            )
        if path.startswith("/models"):
            if path == "/models":
                return self._json(
                    {"object": "list", "data": [_model("gpt-4o-mini"), _model("gpt-4o")]}
                )
            return self._json(_model(path.rsplit("/", 1)[1]))
        if path.startswith("/files"):
            return self._json({"object": "list", "data": [], "has_more": False})
        runs = re.fullmatch(r"/threads/([^/]+)/runs(?:/([^/]+))?", path)
        if runs:
            return self._json(self._run(runs.group(1), runs.group(2), body))
        return FakeReply(
            404,
            dict(_JSON),
            [
                json.dumps(
                    {
                        "error": {
                            "message": f"Unknown request URL: {method} {path}.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "unknown_url",
                        }
                    }
                ).encode()
            ],
        )

    # ------------------------------------------------------------------ payloads
    def _headers(self, base: dict[str, str]) -> dict[str, str]:
        headers = dict(base)
        headers["x-request-id"] = f"req_{next(self._ids):08d}"
        if self.ratelimit_headers:
            headers.update(
                {
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "499",
                    "x-ratelimit-reset-requests": "120ms",
                    "x-ratelimit-limit-tokens": "200000",
                    "x-ratelimit-remaining-tokens": "199970",
                    "x-ratelimit-reset-tokens": "9ms",
                }
            )
        return headers

    def _json(self, data: dict[str, Any]) -> FakeReply:
        return FakeReply(200, self._headers(_JSON), [json.dumps(data).encode()])

    def _sse(self, events: list[tuple[str | None, Any]]) -> FakeReply:
        parts = []
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            prefix = f"event: {name}\n" if name else ""
            parts.append(f"{prefix}data: {text}\n\n".encode())
        return FakeReply(200, self._headers(_SSE), parts)

    def _error(self, failure: _Failure) -> FakeReply:
        kinds = {
            429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
            500: ("The server had an error while processing your request.", "server_error", None),
        }
        message, kind, code = kinds.get(
            failure.status, (f"HTTP {failure.status}", "invalid_request_error", None)
        )
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        headers = self._headers(_JSON)
        headers.update(failure.headers)
        return FakeReply(failure.status, headers, [json.dumps(body).encode()])

    def _usage_chat(self) -> dict[str, Any]:
        if self.raw_usage is not None:
            return dict(self.raw_usage)
        u = self.usage
        return {
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens,
            "prompt_tokens_details": {
                "cached_tokens": u.cached_tokens,
                "audio_tokens": 0,
                **({"cache_write_tokens": u.cache_write_tokens} if u.cache_write_tokens else {}),
            },
            "completion_tokens_details": {
                "reasoning_tokens": u.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _usage_responses(self) -> dict[str, Any]:
        if self.raw_usage is not None:
            return dict(self.raw_usage)
        u = self.usage
        return {
            "input_tokens": u.input_tokens,
            "input_tokens_details": {
                "cached_tokens": u.cached_tokens,
                "cache_write_tokens": u.cache_write_tokens,
            },
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.input_tokens + u.output_tokens,
        }

    def _pieces(self) -> list[str]:
        words = self.reply.split(" ")
        size = max(1, -(-len(words) // self.chunks))
        return [
            " ".join(words[i : i + size]) + (" " if i + size < len(words) else "")
            for i in range(0, len(words), size)
        ]

    def _chat(self, model: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": self._created(),
            "model": _snapshot(model),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self.reply,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage_chat(),
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }

    def _chat_chunks(self, model: str, include_usage: bool) -> list[tuple[str | None, Any]]:
        base = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": self._created(),
            "model": _snapshot(model),
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice], **extra}

        events: list[tuple[str | None, Any]] = [
            (None, chunk({"role": "assistant", "content": "", "refusal": None}, None))
        ]
        events += [(None, chunk({"content": piece}, None)) for piece in self._pieces()]
        events.append((None, chunk({}, "stop")))
        if include_usage:
            events.append((None, {**base, "choices": [], "usage": self._usage_chat()}))
        events.append((None, "[DONE]"))
        return events

    def _completion(self, model: str) -> dict[str, Any]:
        usage = self._usage_chat()
        return {
            "id": f"cmpl-{next(self._ids)}",
            "object": "text_completion",
            "created": self._created(),
            "model": model,
            "choices": [
                {"text": self.reply, "index": 0, "logprobs": None, "finish_reason": "stop"}
            ],
            "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
                      if k in usage},
        }

    def _response(self, model: str, status: str = "completed") -> dict[str, Any]:
        rid = f"resp_{next(self._ids):012d}"
        done = status == "completed"
        return {
            "id": rid,
            "object": "response",
            "created_at": self._created(),
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": _snapshot(model),
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{rid}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": self.reply, "annotations": []}],
                }
            ]
            if done
            else [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": self._usage_responses() if done else None,
            "user": None,
            "metadata": {},
        }

    def _response_events(self, model: str) -> list[tuple[str | None, Any]]:
        started = self._response(model, status="in_progress")
        events: list[tuple[str | None, Any]] = [
            (
                "response.created",
                {"type": "response.created", "sequence_number": 0, "response": started},
            ),
        ]
        for i, piece in enumerate(self._pieces(), start=1):
            events.append(
                (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": i,
                        "item_id": f"msg_{started['id']}",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                    },
                )
            )
        done = self._response(model)
        done["id"] = started["id"]
        events.append(
            (
                "response.completed",
                {"type": "response.completed", "sequence_number": len(events), "response": done},
            )
        )
        return events

    def _run(self, thread_id: str, run_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if run_id is None:
                run_id = f"run_{next(self._ids):08d}"
                self._runs[run_id] = 0
                polls = -1
            else:
                polls = self._runs.get(run_id, 0) + 1
                self._runs[run_id] = polls
        status = "queued" if polls < 0 else "in_progress"
        if polls >= self.run_polls:
            status = _TERMINAL_RUN
        usage = None
        if status == _TERMINAL_RUN:
            usage = {k: v for k, v in self._usage_chat().items() if not k.endswith("_details")}
        return {
            "id": run_id,
            "object": "thread.run",
            "created_at": self._created(),
            "assistant_id": body.get("assistant_id", "asst_fake"),
            "thread_id": thread_id,
            "status": status,
            "model": "gpt-4o-mini",
            "instructions": "",
            "tools": [],
            "usage": usage,
            "metadata": {},
            "parallel_tool_calls": True,
            "response_format": "auto",
            "tool_choice": "auto",
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "incomplete_details": None,
            "last_error": None,
            "required_action": None,
            "started_at": None,
            "completed_at": None,
            "cancelled_at": None,
            "failed_at": None,
            "expires_at": None,
            "max_completion_tokens": None,
            "max_prompt_tokens": None,
            "temperature": 1.0,
            "top_p": 1.0,
        }


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_715_367_049, "owned_by": "system"}


_SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}


def _snapshot(model: str) -> str:
    return _SNAPSHOTS.get(model, model)


def _form_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for match in re.finditer(rb'name="([^"]+)"\r\n\r\n(.*?)\r\n--', body, re.S):
        fields[match.group(1).decode()] = match.group(2).decode("utf-8", "replace")
    return fields


class _NoDelayServer(ThreadingHTTPServer):
    """Every write leaves at once (no Nagle), so the client sees the pieces of ``split``."""

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a stream closed early, a pool that drops an idle
        # connection) is normal traffic, not an error worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Compressor:
    """A streaming compressor: ``push`` returns what can be sent now (a sync flush, so each
    event can be decoded on arrival, as a streaming server does), ``finish`` the end."""

    def __init__(self, push: Any, finish: Any) -> None:
        self.push = push
        self.finish = finish


def _compressor(encoding: str) -> _Compressor:
    if encoding in ("gzip", "deflate"):
        z = zlib.compressobj(6, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        return _Compressor(lambda data: z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH), z.flush)
    if encoding == "br":
        try:
            import brotli  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ValueError("FakeOpenAI(compress='br') needs brotli: pip install brotli") from exc
        b = brotli.Compressor()
        return _Compressor(lambda data: b.process(data) + b.flush(), b.finish)
    try:
        import zstandard
    except ImportError as exc:
        raise ValueError("FakeOpenAI(compress='zstd') needs zstandard: pip install zstandard"
                         ) from exc
    zc = zstandard.ZstdCompressor().compressobj()
    return _Compressor(
        lambda data: zc.compress(data) + zc.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK),
        lambda: zc.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH),
    )


_ODD = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)


def _cut(data: bytes, split: Split) -> list[bytes]:
    """``data`` in pieces: of ``split`` bytes each, or of the uneven sizes ``_ODD`` in turn
    (``"odd"``), which cut lines, events and compressed blocks at every kind of place."""
    if isinstance(split, int):
        return [data[i : i + split] for i in range(0, len(data), split)]
    pieces, at, turn = [], 0, 0
    while at < len(data):
        size = _ODD[turn % len(_ODD)]
        pieces.append(data[at : at + size])
        at, turn = at + size, turn + 1
    return pieces


class _Server:
    """FakeOpenAI on a real socket, in a background thread."""

    def __init__(self, fake: FakeOpenAI, host: str) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"FakeOpenAI serves on loopback only, not {host!r}")
        handler = _handler_for(fake)
        self._server = _NoDelayServer((host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.base_url = f"http://{host}:{self._server.server_address[1]}/v1"

    def __enter__(self) -> str:
        self._thread.start()
        return self.base_url

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # silence the stdlib server
            return

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = fake.handle(self.command, self.path, headers, body)
            is_stream = reply.headers.get("content-type", "").startswith("text/event-stream")
            reply = fake.wire(reply, headers.get("accept-encoding", ""))
            chunked = is_stream if fake.chunked is None else fake.chunked
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if chunked:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(sum(len(p) for p in reply.chunks)))
            self.end_headers()
            for part in reply.chunks:  # one write (and one TCP segment) per piece
                if not part:
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        do_GET = do_POST = do_DELETE = _answer

    return Handler
