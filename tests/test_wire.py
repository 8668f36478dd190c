"""The wire matrix: every adapter call shape against a real 127.0.0.1 HTTP server that
behaves like a provider behind a CDN, in every combination of

* content encoding: identity, gzip, br (and zstd for the OpenAI SDK's own calls);
* framing: ``Content-Length`` or ``Transfer-Encoding: chunked``;
* writes: one per SSE event, or cut at uneven places (across lines, events and compressed
  blocks; the server sends each piece at once, without Nagle);
* the HTTP library under the OpenAI SDK: httpx2 (openai 3.x's own) or the legacy httpx.

Each case asserts the exact tokens and cost that were counted, and that the caller received
exactly what an untracked client receives from the same server (the injected usage chunk
never reaches it). This is what keeps "correct on our fake, wrong in the wild" from coming
back: FakeOpenAI's transport skips the socket, the decoders and the framing; this does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
import pytest

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.adapters.openai import track_openai
from quota_hooks.pricing import to_nanos
from quota_hooks.testing import FakeOpenAI, FakeUsage
from quota_hooks.windows import month_key

pytestmark = pytest.mark.wire

USAGE = FakeUsage(input_tokens=1_200, output_tokens=300, cached_tokens=1_024,
                  reasoning_tokens=100)
EMBED_USAGE = (1_200, 0)
MSG = [{"role": "user", "content": "hello"}]
LIBS = {"httpx2": httpx2, "httpx": httpx}


@dataclass(frozen=True)
class Wire:
    encoding: str | None
    chunked: bool
    split: str

    @property
    def name(self) -> str:
        framing = "chunked" if self.chunked else "length"
        return f"{self.encoding or 'identity'}-{framing}-{self.split}"


WIRES = [Wire(enc, chunked, split) for enc in (None, "gzip", "br")
         for chunked in (False, True) for split in ("event", "odd")]


@dataclass
class Servers:
    """Two servers with the same wire: one for the tracked client, one for the baseline."""

    wire: Wire
    tracked: str
    plain: str
    fake: FakeOpenAI


@pytest.fixture(scope="module", params=WIRES, ids=[w.name for w in WIRES])
def servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    wire: Wire = request.param

    def make() -> FakeOpenAI:
        return FakeOpenAI(USAGE, compress=wire.encoding, chunked=wire.chunked, split=wire.split,
                          chunks=7)

    tracked, plain = make(), make()
    with tracked.serve() as tracked_url, plain.serve() as plain_url:
        yield Servers(wire, tracked_url, plain_url, tracked)


def manager() -> QuotaManager:
    # Enforcing limits, so every call reserves before it is sent and settles after.
    return QuotaManager(QuotaPolicy(rpm=10_000, tpm=10_000_000))


def normalized(body: bytes) -> bytes:
    """A body with the parts that differ from call to call (ids, times) made equal."""
    body = re.sub(rb'(chatcmpl-|resp_|cmpl-|req_)\d+', rb"\1N", body)
    return re.sub(rb'"(created|created_at)":\s*\d+', rb'"\1":0', body)


def sse_events(body: bytes) -> list[Any]:
    events = []
    for block in re.split(rb"\r\n\r\n|\n\n", body):
        data = b"\n".join(line[5:].strip() for line in block.splitlines()
                          if line.startswith(b"data:"))
        if data and data != b"[DONE]":
            events.append(json.loads(data))
    return events


# ---------------------------------------------------------------------------- call shapes
# Each shape makes one call and returns the bytes the caller received (decoded).

def chat(client: openai.OpenAI) -> bytes:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    assert raw.parse().choices[0].message.content
    return raw.http_response.content


def chat_stream(client: openai.OpenAI) -> bytes:
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MSG, stream=True
    ) as response:
        return b"".join(response.iter_bytes())


def chat_stream_sdk(client: openai.OpenAI) -> bytes:
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                 stream=True))
    assert all(chunk.usage is None for chunk in chunks)  # our usage chunk never shows
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text.encode()


def chat_stream_with_usage(client: openai.OpenAI) -> bytes:
    """The caller asked for the usage chunk: it must get it (nothing is cut)."""
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MSG, stream=True,
        stream_options={"include_usage": True},
    ) as response:
        return b"".join(response.iter_bytes())


def responses(client: openai.OpenAI) -> bytes:
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hello")
    assert raw.parse().output_text
    return raw.http_response.content


def responses_stream(client: openai.OpenAI) -> bytes:
    with client.responses.with_streaming_response.create(
        model="gpt-4o-mini", input="hello", stream=True
    ) as response:
        return b"".join(response.iter_bytes())


def embeddings(client: openai.OpenAI) -> bytes:
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small",
                                                     input=["a", "b"])
    assert len(raw.parse().data) == 2
    return raw.http_response.content


SHAPES: dict[str, tuple[Callable[[openai.OpenAI], bytes], str, str]] = {
    "chat": (chat, "gpt-4o-mini", "chat.completions"),
    "chat_stream": (chat_stream, "gpt-4o-mini", "chat.completions"),
    "chat_stream_sdk": (chat_stream_sdk, "gpt-4o-mini", "chat.completions"),
    "chat_stream_with_usage": (chat_stream_with_usage, "gpt-4o-mini", "chat.completions"),
    "responses": (responses, "gpt-4o-mini", "responses"),
    "responses_stream": (responses_stream, "gpt-4o-mini", "responses"),
    "embeddings": (embeddings, "text-embedding-3-small", "embeddings"),
}


def expected_record(m: QuotaManager, model: str, method: str) -> UsageRecord:
    if method == "embeddings":
        return UsageRecord(model=model, api_method=method, input_tokens=EMBED_USAGE[0])
    return UsageRecord(model=model, api_method=method, input_tokens=USAGE.input_tokens,
                       cached_input_tokens=USAGE.cached_tokens,
                       output_tokens=USAGE.output_tokens, reasoning_tokens=USAGE.reasoning_tokens)


def only_record(m: QuotaManager) -> UsageRecord:
    [record] = m.store.recent("workspace:ws", 10)
    return record


def assert_counted(m: QuotaManager, model: str, method: str) -> None:
    record = only_record(m)
    want = expected_record(m, model, method)
    assert not record.estimated, record.estimate_reason
    assert record.api_method == method and record.model.startswith(model)
    assert (record.input_tokens, record.cached_input_tokens) == (
        want.input_tokens, want.cached_input_tokens)
    assert (record.output_tokens, record.reasoning_tokens) == (
        want.output_tokens, want.reasoning_tokens)
    cost = m.prices.cost(want).usd
    assert cost is not None and cost > 0
    assert record.cost == cost
    status = m.status("ws")
    assert status.requests_per_minute.current == 1
    assert status.tokens_per_minute.current == want.total_tokens
    counters = m.store.counters("workspace:ws", m.now(), month_key(m.now()))
    assert counters.cost_month_nanos == to_nanos(cost)
    assert m.store.pending() == 0  # the reservation was settled, not left to expire
    assert m.tracking_errors == 0


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("shape", SHAPES)
def test_openai_sync(servers: Servers, shape: str, lib: str) -> None:
    call, model, method = SHAPES[shape]
    m = manager()
    tracked = track_openai(
        openai.OpenAI(api_key="sk-test", base_url=servers.tracked, max_retries=0,
                      http_client=LIBS[lib].Client()),
        workspace_id="ws", manager=m)
    plain = openai.OpenAI(api_key="sk-test", base_url=servers.plain, max_retries=0,
                          http_client=LIBS[lib].Client())
    got = call(tracked)
    assert normalized(got) == normalized(call(plain))
    assert_counted(m, model, method)
    if shape == "chat_stream_with_usage":
        assert sse_events(got)[-1]["usage"]["prompt_tokens"] == USAGE.input_tokens


ASYNC_SHAPES = ("chat_stream", "responses_stream", "chat")


async def _acall(shape: str, client: openai.AsyncOpenAI) -> bytes:
    if shape == "chat":
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                     messages=MSG)
        return raw.http_response.content
    if shape == "chat_stream":
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MSG, stream=True
        ) as response:
            return b"".join([part async for part in response.iter_bytes()])
    async with client.responses.with_streaming_response.create(
        model="gpt-4o-mini", input="hello", stream=True
    ) as response:
        return b"".join([part async for part in response.iter_bytes()])


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("shape", ASYNC_SHAPES)
async def test_openai_async(servers: Servers, shape: str, lib: str) -> None:
    m = manager()
    tracked = track_openai(
        openai.AsyncOpenAI(api_key="sk-test", base_url=servers.tracked, max_retries=0,
                           http_client=LIBS[lib].AsyncClient()),
        workspace_id="ws", manager=m)
    plain = openai.AsyncOpenAI(api_key="sk-test", base_url=servers.plain, max_retries=0,
                               http_client=LIBS[lib].AsyncClient())
    got = await _acall(shape, tracked)
    assert normalized(got) == normalized(await _acall(shape, plain))
    _, model, method = SHAPES[shape]
    assert_counted(m, model, method)


# ---------------------------------------------------------------------------- LangChain
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_langchain_paired_with_the_transport(servers: Servers, lib: str, stream: bool) -> None:
    """ChatOpenAI on a tracked client with the handler registered: counted once, exactly."""
    from langchain_openai import ChatOpenAI

    from quota_hooks.adapters.langchain import QuotaCallbackHandler

    m = manager()
    handler = QuotaCallbackHandler(manager=m, workspace_id="ws")
    tracked = track_openai(
        openai.OpenAI(api_key="sk-test", base_url=servers.tracked, max_retries=0,
                      http_client=LIBS[lib].Client()), workspace_id="ws", manager=m)
    llm = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", base_url=servers.tracked,
                     client=tracked.chat.completions, callbacks=[handler])
    if stream:
        text = "".join(str(chunk.content) for chunk in llm.stream("hello"))
    else:
        text = str(llm.invoke("hello").content)
    assert text == servers.fake.reply
    assert_counted(m, "gpt-4o-mini", "chat.completions")
    assert only_record(m).source == "openai"  # the transport saw the exact HTTP usage


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_langchain_handler_alone(servers: Servers, stream: bool) -> None:
    """The handler alone, on langchain-openai's own client over the same wire."""
    from langchain_openai import ChatOpenAI

    from quota_hooks.adapters.langchain import QuotaCallbackHandler

    m = manager()
    llm = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test", base_url=servers.tracked,
                     max_retries=0, stream_usage=True,
                     callbacks=[QuotaCallbackHandler(manager=m, workspace_id="ws")])
    if stream:
        assert "".join(str(c.content) for c in llm.stream("hello")) == servers.fake.reply
    else:
        assert llm.invoke("hello").content == servers.fake.reply
    assert_counted(m, "gpt-4o-mini", "chat.completions")


# ---------------------------------------------------------------------------- LiteLLM
@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
def test_litellm(servers: Servers, stream: bool, clean_litellm_callbacks: None) -> None:
    import litellm

    from quota_hooks.adapters.litellm import QuotaLogger

    m = manager()
    litellm.callbacks = [QuotaLogger(manager=m, default_workspace="ws")]
    kwargs: dict[str, Any] = {"model": "openai/gpt-4o-mini", "messages": MSG,
                              "api_base": servers.tracked, "api_key": "sk-test"}
    if stream:
        chunks = list(litellm.completion(stream=True, stream_options={"include_usage": True},
                                         **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = litellm.completion(**kwargs).choices[0].message.content
    assert text == servers.fake.reply
    assert m.drain()
    assert_counted(m, "gpt-4o-mini", "chat.completions")


# ---------------------------------------------------------------------------- zstd, deflate
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("encoding", ["zstd", "deflate"])
@pytest.mark.parametrize("shape", ["chat", "chat_stream"])
def test_more_encodings(encoding: str, lib: str, shape: str) -> None:
    call, model, method = SHAPES[shape]
    tracked, plain = (FakeOpenAI(USAGE, compress=encoding, split="odd") for _ in range(2))
    with tracked.serve() as tracked_url, plain.serve() as plain_url:
        m = manager()
        client = track_openai(openai.OpenAI(api_key="k", base_url=tracked_url, max_retries=0,
                                            http_client=LIBS[lib].Client()),
                              workspace_id="ws", manager=m)
        got = call(client)
        assert normalized(got) == normalized(call(openai.OpenAI(
            api_key="k", base_url=plain_url, max_retries=0, http_client=LIBS[lib].Client())))
    assert tracked.requests[-1][3]["accept-encoding"] != "identity" or shape == "chat_stream"
    assert_counted(m, model, method)


# ---------------------------------------------------------------------------- transports
# What sockets cannot show deterministically: the exact chunks, and inner transports that
# hand back a response they have read already.

@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("shape", ["chat", "chat_stream_with_usage", "responses_stream"])
def test_the_caller_gets_the_wire_chunk_for_chunk(lib: str, shape: str) -> None:
    """Where nothing is cut, the caller's raw chunks are the wire's, compressed as sent."""

    def raw_chunks(client: openai.OpenAI) -> list[bytes]:
        kwargs: dict[str, Any] = {"model": "gpt-4o-mini"}
        if shape == "responses_stream":
            api: Any = client.responses
            kwargs.update(input="hello", stream=True)
        else:
            api = client.chat.completions
            kwargs["messages"] = MSG
            if shape != "chat":
                kwargs.update(stream=True, stream_options={"include_usage": True})
        with api.with_streaming_response.create(**kwargs) as response:
            assert response.http_response.headers["content-encoding"] == "gzip"
            return [normalized(c) for c in response.http_response.iter_raw()]

    def client(fake: FakeOpenAI, m: QuotaManager | None) -> openai.OpenAI:
        made = openai.OpenAI(api_key="k", base_url="http://fake/v1", max_retries=0,
                             http_client=LIBS[lib].Client(transport=fake.transport(lib)))
        return made if m is None else track_openai(made, workspace_id="ws", manager=m)

    m = manager()
    wire = {"compress": "gzip", "split": "odd", "chunks": 9, "created": 1_767_225_600}
    # gzip output depends only on the input: equal bodies give equal chunks.
    tracked = raw_chunks(client(FakeOpenAI(USAGE, **wire), m))
    assert len(tracked) > 10
    assert tracked == raw_chunks(client(FakeOpenAI(USAGE, **wire), None))
    assert_counted(m, "gpt-4o-mini", "responses" if shape.startswith("responses") else
                   "chat.completions")


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_body_the_inner_transport_has_read_is_recorded(lib: str, stream: bool) -> None:
    """An inner transport (a cache, a mock) may return a response it has read already: its
    stream is never iterated, yet the call is counted and its reservation settled."""
    http = LIBS[lib]
    fake = FakeOpenAI(USAGE)

    def handler(request: Any) -> Any:
        reply = fake.handle(request.method, str(request.url), dict(request.headers),
                            request.read())
        return http.Response(reply.status, headers=reply.headers, content=b"".join(reply.chunks))

    m = manager()
    client = track_openai(openai.OpenAI(
        api_key="k", base_url="http://fake/v1", max_retries=0,
        http_client=http.Client(transport=http.MockTransport(handler))),
        workspace_id="ws", manager=m)
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                     stream=True))
        assert chunks and all(chunk.usage is None for chunk in chunks)
    else:
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert_counted(m, "gpt-4o-mini", "chat.completions")


@pytest.mark.parametrize("lib", LIBS)
def test_a_corrupt_body_settles_at_the_estimate(lib: str) -> None:
    """A body that says gzip but is not: the client fails, and the call is still charged
    (its estimate), never waved through uncounted."""
    http = LIBS[lib]

    class Body(http.SyncByteStream):  # type: ignore[misc, name-defined]
        def __iter__(self) -> Iterator[bytes]:
            yield b"\x1f\x8b\x08\x00not really gzip"

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "application/json",
                                           "content-encoding": "gzip"}, stream=Body())

    m = manager()
    client = track_openai(openai.OpenAI(
        api_key="k", base_url="http://fake/v1", max_retries=0,
        http_client=http.Client(transport=http.MockTransport(handler))),
        workspace_id="ws", manager=m)
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises on a bad body
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=50)
    record = only_record(m)
    assert record.estimated and record.output_tokens == 50 and record.input_tokens > 0
    assert m.store.pending() == 0
