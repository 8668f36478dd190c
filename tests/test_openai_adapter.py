"""The OpenAI adapter, driven through the real `openai` SDK against FakeOpenAI (offline)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import openai
import pytest

from quota_hooks import QuotaExceededError, QuotaManager, QuotaPolicy, QuotaStatus, UsageRecord
from quota_hooks.adapters.openai import (
    WORKSPACE_HEADER,
    api_method_for,
    get_enhanced_openai_client,
    track_openai,
)
from quota_hooks.storage import MemoryStore
from quota_hooks.testing import FakeOpenAI, FakeUsage, ManualClock

USAGE = FakeUsage(input_tokens=12, output_tokens=5, cached_tokens=4, reasoning_tokens=2)
MSG = [{"role": "user", "content": "hello"}]


def records(manager: QuotaManager, ws: str = "ws") -> list[UsageRecord]:
    return list(reversed(manager.store.recent(f"workspace:{ws}", 1000)))


def make(
    fake: FakeOpenAI,
    manager: QuotaManager,
    *,
    is_async: bool = False,
    lib: str = "httpx2",
    max_retries: int = 2,
) -> Any:
    module = httpx2 if lib == "httpx2" else httpx
    http = (module.AsyncClient if is_async else module.Client)(transport=fake.transport(lib))
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    raw = cls(
        api_key="sk-secret-key",
        base_url="http://fake.test/v1",
        http_client=http,
        max_retries=max_retries,
    )
    return track_openai(raw, workspace_id="ws", manager=manager)


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(USAGE)


@pytest.fixture
def manager(clock: ManualClock) -> QuotaManager:
    return QuotaManager(QuotaPolicy.unlimited(), clock=clock)


# Each endpoint: (call on a client, expected api_method, expected record fields)
def _audio(client: Any, kind: str, model: str) -> Any:
    api = getattr(client.audio, kind)
    return api.create(model=model, file=("a.wav", io.BytesIO(b"RIFF0000WAVE"), "audio/wav"))


ENDPOINTS: list[tuple[str, Callable[[Any], Any], str, dict[str, Any]]] = [
    (
        "chat",
        lambda c: c.chat.completions.create(model="gpt-4o-mini", messages=MSG),
        "chat.completions",
        {
            "model": "gpt-4o-mini-2024-07-18",
            "input_tokens": 12,
            "output_tokens": 5,
            "cached_input_tokens": 4,
            "reasoning_tokens": 2,
            "total_tokens": 17,
        },
    ),
    (
        "completions",
        lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
        "completions",
        {"model": "gpt-3.5-turbo-instruct", "input_tokens": 12, "output_tokens": 5},
    ),
    (
        "responses",
        lambda c: c.responses.create(model="gpt-4o", input="hi"),
        "responses",
        {
            "model": "gpt-4o-2024-08-06",
            "input_tokens": 12,
            "output_tokens": 5,
            "cached_input_tokens": 4,
            "reasoning_tokens": 2,
        },
    ),
    (
        "embeddings",
        lambda c: c.embeddings.create(model="text-embedding-3-small", input=["a", "b"]),
        "embeddings",
        {"model": "text-embedding-3-small", "input_tokens": 12, "output_tokens": 0},
    ),
    (
        "dall-e",
        lambda c: c.images.generate(model="dall-e-3", prompt="cat", size="1024x1792", quality="hd"),
        "images.generate",
        {"model": "dall-e-3", "images": 1, "image_size": "1024x1792", "image_quality": "hd"},
    ),
    (
        "gpt-image",
        lambda c: c.images.generate(model="gpt-image-1", prompt="cat"),
        "images.generate",
        {"model": "gpt-image-1", "input_tokens": 12, "output_tokens": 5},
    ),
    (
        "speech",
        lambda c: c.audio.speech.create(model="tts-1", voice="alloy", input="Hello there"),
        "audio.speech",
        {"model": "tts-1", "characters": 11},
    ),
    (
        "whisper",
        lambda c: _audio(c, "transcriptions", "whisper-1"),
        "audio.transcriptions",
        {"model": "whisper-1", "audio_seconds": 12.5},
    ),
    (
        "transcribe",
        lambda c: _audio(c, "transcriptions", "gpt-4o-transcribe"),
        "audio.transcriptions",
        {
            "model": "gpt-4o-transcribe",
            "input_tokens": 12,
            "audio_input_tokens": 12,
            "output_tokens": 5,
        },
    ),
    (
        "translation",
        lambda c: _audio(c, "translations", "whisper-1"),
        "audio.translations",
        {"model": "whisper-1", "audio_seconds": 12.5},
    ),
    (
        "moderation",
        lambda c: c.moderations.create(input="hi"),
        "moderations",
        {"model": "omni-moderation-latest"},
    ),
    ("models", lambda c: c.models.list(), "models", {"total_tokens": 0}),
    ("files", lambda c: c.files.list(), "files", {"total_tokens": 0}),
]


@pytest.mark.parametrize(
    ("name", "call", "method", "expected"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
def test_every_endpoint_sync(
    fake: FakeOpenAI,
    manager: QuotaManager,
    name: str,
    call: Callable[[Any], Any],
    method: str,
    expected: dict[str, Any],
) -> None:
    call(make(fake, manager))
    [record] = records(manager)
    assert record.api_method == method
    assert record.success and record.status_code == 200 and not record.estimated
    assert record.source == "openai" and record.workspace_id == "ws"
    for key, value in expected.items():
        assert getattr(record, key) == value, key


async def _acall(call: Callable[[Any], Any], client: Any) -> Any:
    result = call(client)
    if asyncio.iscoroutine(result):
        return await result
    async for _ in result:  # async paginators
        pass
    return None


@pytest.mark.parametrize(
    ("name", "call", "method", "expected"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS]
)
async def test_every_endpoint_async(
    fake: FakeOpenAI,
    manager: QuotaManager,
    name: str,
    call: Callable[[Any], Any],
    method: str,
    expected: dict[str, Any],
) -> None:
    await _acall(call, make(fake, manager, is_async=True))
    [record] = records(manager)
    assert record.api_method == method and record.success
    for key, value in expected.items():
        assert getattr(record, key) == value, key


def _chunks(stream: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.model_dump().items() if k != "created"} for c in stream]


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_identical_to_untracked_client(
    manager: QuotaManager, include_usage: bool
) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    plain_fake, tracked_fake = FakeOpenAI(USAGE), FakeOpenAI(USAGE)
    plain = openai.OpenAI(
        api_key="k",
        base_url="http://fake.test/v1",
        http_client=httpx2.Client(transport=plain_fake.transport()),
    )
    seen_plain = _chunks(
        plain.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True, **options)
    )
    tracked = make(tracked_fake, manager)
    seen_tracked = _chunks(
        tracked.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True, **options)
    )
    assert seen_tracked == seen_plain
    assert (seen_plain[-1]["usage"] is not None) is include_usage
    [record] = records(manager)
    assert (record.input_tokens, record.output_tokens, record.cached_input_tokens) == (12, 5, 4)
    assert record.stream and not record.estimated
    sent = tracked_fake.requests[-1][2]
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("include_usage", [False, True])
async def test_async_stream_chunks_identical(manager: QuotaManager, include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    plain = openai.AsyncOpenAI(
        api_key="k",
        base_url="http://fake.test/v1",
        http_client=httpx2.AsyncClient(transport=FakeOpenAI(USAGE).transport()),
    )
    stream = await plain.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, **options
    )
    seen_plain = [c async for c in stream]
    tracked = make(FakeOpenAI(USAGE), manager, is_async=True)
    stream = await tracked.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, **options
    )
    seen_tracked = [c async for c in stream]
    strip = lambda cs: [{k: v for k, v in c.model_dump().items() if k != "created"} for c in cs]  # noqa: E731
    assert strip(seen_tracked) == strip(seen_plain)
    [record] = records(manager)
    assert (record.input_tokens, record.output_tokens) == (12, 5) and not record.estimated


def test_responses_stream_usage_from_completed_event(
    fake: FakeOpenAI, manager: QuotaManager
) -> None:
    client = make(fake, manager)
    events = [e.type for e in client.responses.create(model="gpt-4o", input="hi", stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    [record] = records(manager)
    assert record.api_method == "responses" and record.stream
    assert (record.input_tokens, record.output_tokens, record.reasoning_tokens) == (12, 5, 2)


def test_early_break_is_estimated_not_zero(fake: FakeOpenAI, manager: QuotaManager) -> None:
    client = make(fake, manager)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
    for _ in stream:
        break
    stream.close()
    [record] = records(manager)
    assert record.estimated and record.stream
    assert record.input_tokens > 0  # estimated from the request size
    assert record.output_tokens >= 1


async def test_async_early_break_is_estimated(fake: FakeOpenAI, manager: QuotaManager) -> None:
    client = make(fake, manager, is_async=True)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
    async for _ in stream:
        break
    await stream.close()
    [record] = records(manager)
    assert record.estimated and record.input_tokens > 0


def test_with_raw_response(fake: FakeOpenAI, manager: QuotaManager) -> None:
    raw = make(fake, manager).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MSG
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse().usage.total_tokens == 17
    [record] = records(manager)
    assert record.total_tokens == 17 and record.request_id == raw.headers["x-request-id"]


def test_sdk_retries_are_attempts(fake: FakeOpenAI, manager: QuotaManager) -> None:
    fake.fail_next(429, times=2)
    response = make(fake, manager).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert response.usage.total_tokens == 17
    got = records(manager)
    assert [(r.attempt, r.status_code, r.success) for r in got] == [
        (0, 429, False),
        (1, 429, False),
        (2, 200, True),
    ]
    assert got[0].error_type == "rate_limit_exceeded"
    report = manager.status("ws")
    assert report.requests_per_minute.current == 3
    assert report.enhanced_tracking is not None
    assert report.enhanced_tracking.api_methods_breakdown["chat.completions"].error_count == 2
    assert report.status is QuotaStatus.RATE_LIMITED
    assert report.provider_limits["openai-compatible"]["remaining_requests"] == "499"


def test_rate_limit_headers_are_read_once_a_second_and_on_every_429(
        fake: FakeOpenAI, manager: QuotaManager, monkeypatch: pytest.MonkeyPatch) -> None:
    noted: list[str] = []
    real = manager.note_provider_limits

    def note(workspace_id: str, provider: str, headers: Any) -> None:
        noted.append(headers["x-ratelimit-remaining-requests"])
        real(workspace_id, provider, headers)

    monkeypatch.setattr(manager, "note_provider_limits", note)
    client = make(fake, manager, max_retries=0)
    for _ in range(50):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert noted == ["499"]  # 50 calls well inside a second: read once
    fake.fail_next(429, times=1)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert noted == ["499", "0"]  # a 429 is always read
    assert manager.status("ws").provider_limits["openai-compatible"]["remaining_requests"] == "0"
    assert len(records(manager)) == 51  # every call still counted


def test_server_error_is_a_failure(fake: FakeOpenAI, manager: QuotaManager) -> None:
    fake.fail_next(500, times=1)
    with pytest.raises(openai.InternalServerError):
        make(fake, manager, max_retries=0).chat.completions.create(model="gpt-4o", messages=MSG)
    [record] = records(manager)
    assert (record.success, record.status_code, record.error_type) == (False, 500, "server_error")


def test_run_polled_five_times_is_counted_once(manager: QuotaManager) -> None:
    fake = FakeOpenAI(USAGE, run_polls=3)
    client = make(fake, manager)
    run = client.beta.threads.runs.create(thread_id="thread_1", assistant_id="asst_1")
    for _ in range(5):
        run = client.beta.threads.runs.retrieve(run.id, thread_id="thread_1")
    assert run.status == "completed"
    got = records(manager)
    assert [r.api_method for r in got] == ["threads.runs"] * 6
    assert sum(r.input_tokens for r in got) == 12 and sum(r.output_tokens for r in got) == 5


def test_legacy_httpx_client_sync(fake: FakeOpenAI, manager: QuotaManager) -> None:
    client = make(fake, manager, lib="httpx")
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    got = records(manager)
    assert [(r.total_tokens, r.stream) for r in got] == [(17, False), (17, True)]


async def test_legacy_httpx_client_async(fake: FakeOpenAI, manager: QuotaManager) -> None:
    client = make(fake, manager, is_async=True, lib="httpx")
    await client.embeddings.create(model="text-embedding-3-small", input="x")
    [record] = records(manager)
    assert record.input_tokens == 12


def test_real_socket_on_loopback(fake: FakeOpenAI, manager: QuotaManager) -> None:
    with fake.serve() as base_url:
        raw = openai.OpenAI(api_key="sk-secret", base_url=base_url, max_retries=0)
        client = track_openai(raw, workspace_id="ws", manager=manager)
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        chunks = list(
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
        )
        client.close()
    assert all(c.choices for c in chunks)  # the injected usage chunk never reaches the caller
    assert [r.total_tokens for r in records(manager)] == [17, 17]


def test_azure_paths_and_provider(fake: FakeOpenAI, manager: QuotaManager) -> None:
    raw = openai.AzureOpenAI(
        api_key="k",
        api_version="2024-10-21",
        azure_endpoint="https://acme.openai.azure.com",
        azure_deployment="prod-mini",
        http_client=httpx2.Client(transport=fake.transport()),
    )
    client = track_openai(raw, workspace_id="ws", manager=manager)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    [record] = records(manager)
    assert record.provider == "azure" and record.api_method == "chat.completions"
    assert record.total_tokens == 17
    _, path, _, _ = fake.requests[-1]
    assert path == "/chat/completions"


def test_headers_are_stripped_and_secrets_never_stored(
    fake: FakeOpenAI, manager: QuotaManager, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        make(fake, manager).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    sent_headers = fake.requests[-1][3]
    assert not {h for h in sent_headers if h.lower().startswith("x-quota-hooks")}, sent_headers
    [record] = records(manager)
    dumped = repr(record.to_dict()) + repr(manager.status("ws").to_dict())
    assert "sk-secret-key" not in dumped and "hello" not in dumped
    assert "sk-secret-key" not in caplog.text


def test_per_call_workspace_and_scopes(fake: FakeOpenAI, manager: QuotaManager) -> None:
    raw = openai.OpenAI(
        api_key="k",
        base_url="http://fake.test/v1",
        http_client=httpx2.Client(transport=fake.transport()),
    )
    client = track_openai(raw, workspace_id="a/b c", manager=manager, scopes={"team": "ml"})
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, extra_headers={WORKSPACE_HEADER: "other"}
    )
    assert manager.workspaces() == ["a/b c", "other"]
    assert records(manager, "a/b c")[0].scopes == {"team": "ml"}


class ExplodingStore(MemoryStore):
    def commit(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("store down")

    async def acommit(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("store down")


async def test_tracking_failure_never_breaks_the_call(fake: FakeOpenAI, clock: ManualClock) -> None:
    manager = QuotaManager(store=ExplodingStore(), clock=clock)
    reply = make(fake, manager).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert reply.choices[0].message.content
    stream = await make(fake, manager, is_async=True).chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True
    )
    assert len([c async for c in stream]) == 5
    assert manager.tracking_errors == 2
    assert manager.status("ws", enhanced=False).status is QuotaStatus.DEGRADED


def test_seed_factory_uses_the_default_manager(fake: FakeOpenAI, manager: QuotaManager) -> None:
    from quota_hooks.manager import set_default_manager

    set_default_manager(manager)
    try:
        client = get_enhanced_openai_client(
            workspace_id="ws",
            api_key="k",
            base_url="http://fake.test/v1",
            http_client=httpx2.Client(transport=fake.transport()),
        )
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    finally:
        set_default_manager(None)
    assert records(manager)[0].total_tokens == 17


def test_client_close_is_forwarded(fake: FakeOpenAI, manager: QuotaManager) -> None:
    closed = []

    class Recording(httpx2.MockTransport):
        def close(self) -> None:
            closed.append(True)

    http = httpx2.Client(transport=Recording(fake.transport().handler))
    raw = openai.OpenAI(api_key="k", base_url="http://fake.test/v1", http_client=http)
    client = track_openai(raw, workspace_id="ws", manager=manager)
    client.close()
    assert closed == [True]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/chat/completions", "chat.completions"),
        ("/v1/completions", "completions"),
        ("/v1/responses", "responses"),
        ("/v1/responses/resp_1/cancel", "responses.cancel"),
        ("/v1/responses/resp_1", "responses"),  # no such POST: counted, not housekeeping
        ("/v1/responses/compact", "responses"),
        ("/v1/responses/input_tokens", "responses.input_tokens"),
        ("/v1/chat/completions/chatcmpl-1", "chat.completions.update"),
        ("/v1/images/edits", "images.edit"),
        ("/v1/images/variations", "images.variation"),
        ("/v1/batches", "batches"),
        ("/v1/fine_tuning/jobs", "fine_tuning"),
        ("/v1/vector_stores/vs_1/files", "vector_stores"),
        ("/v1/uploads", "uploads"),
        ("/v1/conversations/c1/items", "conversations"),
        ("/v1/assistants", "assistants"),
        ("/v1/threads", "threads"),
        ("/v1/threads/t1/runs/r1/steps", "threads.runs"),
        ("/v1/threads/runs", "threads.runs"),
        ("/v1/threads/t1/messages", "threads.messages"),
        ("/openai/deployments/prod/embeddings?api-version=1", "embeddings"),
        ("/v1/brand-new/thing", "brand-new"),
        ("/", "unknown"),
    ],
)
def test_api_method_for(path: str, method: str) -> None:
    assert api_method_for("POST", path) == method


@pytest.mark.parametrize(("verb", "path", "method"), [
    ("GET", "/v1/responses/resp_1", "responses.retrieve"),
    ("DELETE", "/v1/responses/resp_1", "responses.delete"),
    ("GET", "/v1/responses/resp_1/input_items", "responses.input_items"),
    ("POST", "/v1/responses/resp_1/input_items", "responses"),
    ("GET", "/v1/chat/completions/chatcmpl-1", "chat.completions.retrieve"),
    ("GET", "/v1/chat/completions/chatcmpl-1/messages", "chat.completions.messages"),
    ("DELETE", "/openai/deployments/d/chat/completions/c1?api-version=1",
     "chat.completions.delete"),
    ("GET", "/v1/batches/b1", "batches"),
    ("POST", "/api/v1/chat/completions", "chat.completions"),  # OpenRouter
    ("POST", "/v1/openai/chat/completions", "chat.completions"),  # DeepInfra
    ("POST", "/v1beta/openai/chat/completions", "chat.completions"),  # Gemini
    ("POST", "/client/v4/accounts/a1/ai/v1/chat/completions", "chat.completions"),  # Cloudflare
    ("POST", "/v1/projects/p/locations/us-central1/endpoints/openapi/chat/completions",
     "chat.completions"),  # Vertex AI
    ("POST", "/api/v1/responses/compact", "responses"),
    ("GET", "/v1/organization/usage/completions", "organization"),
])
def test_housekeeping_is_a_verb_and_a_path(verb: str, path: str, method: str) -> None:
    assert api_method_for(verb, path) == method


# ------------------------------------------------------------------ from an adversarial pass
@pytest.mark.parametrize("lib", ["httpx2", "httpx"])
def test_a_response_subclass_of_an_inner_transport_is_read_with_the_clients_library(
        lib: str, manager: QuotaManager) -> None:
    """A caching or retrying transport of another package answers with its own Response
    subclass, streamed and gzipped: its usage is read, and the caller gets its chunks."""
    module: Any = httpx2 if lib == "httpx2" else httpx

    class TheirResponse(module.Response):  # type: ignore[misc,name-defined]
        pass

    class Chunks(module.SyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __iter__(self) -> Any:
            for i in range(0, len(self.data), 7):
                yield self.data[i:i + 7]

    def sse(*events: dict[str, Any]) -> bytes:
        return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + (
            b"data: [DONE]\n\n")

    usage = {"prompt_tokens": 20_000, "completion_tokens": 8_000, "total_tokens": 28_000}

    class Inner(module.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            asked = json.loads(request.content)
            delta = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                     "choices": [{"index": 0, "delta": {"content": "hi"}}]}
            if asked.get("stream"):
                with_usage = asked.get("stream_options", {}).get("include_usage")
                events = [{**delta, "usage": None}, {**delta, "choices": [], "usage": usage}
                          ] if with_usage else [delta]
                body = gzip.compress(sse(*events))
                kind = "text/event-stream"
            else:
                body = gzip.compress(json.dumps({
                    "id": "c", "object": "chat.completion", "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "hi"}}],
                    "usage": usage}).encode())
                kind = "application/json"
            return TheirResponse(200, stream=Chunks(body), headers={
                "content-type": kind, "content-encoding": "gzip"})

    client = track_openai(openai.OpenAI(api_key="sk-test", base_url="http://inner.test/v1",
                                        max_retries=0,
                                        http_client=module.Client(transport=Inner())),
                          workspace_id="ws", manager=manager)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.total_tokens == 28_000
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True))  # type: ignore[arg-type]
    assert [c.choices[0].delta.content for c in chunks] == ["hi"]  # not our usage chunk
    assert [(r.input_tokens, r.output_tokens, r.estimated) for r in records(manager)] == [
        (20_000, 8_000, False), (20_000, 8_000, False)]
    assert manager.tracking_errors == 0


@pytest.mark.parametrize("case", ["images.edit n=1.0", "a bug reading the body"])
def test_a_request_we_cannot_read_is_still_reserved_and_recorded(
        case: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body whose reading failed (a count written 1.0 in a form; JSON nested deeper than
    the parser reads, or any bug of ours: a failing read_json) was let through unreserved
    and unrecorded: now it is charged like any call, so rpm=1 refuses the second one."""
    if case == "a bug reading the body":
        from quota_hooks.adapters._openai_call import OpenAICall

        def broken(self: Any, content: bytes, *, inject_stream_usage: bool) -> None:
            raise RecursionError("maximum recursion depth exceeded")

        monkeypatch.setattr(OpenAICall, "read_json", broken)
    fake = FakeOpenAI(USAGE)
    manager = QuotaManager(QuotaPolicy.unlimited().model_copy(update={"rpm": 1, "mode": "raise"}),
                           clock=clock)
    client = make(fake, manager, max_retries=0)

    def call() -> Any:
        if case.startswith("images"):
            return client.images.edit(image=("a.png", b"x" * 100, "image/png"), prompt="p",
                                      model="dall-e-2", n=1.0)
        return client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

    call()
    with pytest.raises(QuotaExceededError):
        call()
    [record] = records(manager)
    assert record.success and (record.input_tokens or record.images)


@pytest.mark.parametrize("n", [4, 4.0, "4"], ids=["int", "float", "string"])
def test_images_are_charged_by_the_count_asked_however_it_is_written(
        n: Any, fake: FakeOpenAI, manager: QuotaManager) -> None:
    client = make(fake, manager)
    client.images.generate(model="dall-e-2", prompt="p", n=n, size="256x256")
    [record] = records(manager)
    assert record.images == 4
