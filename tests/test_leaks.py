"""Paths that once let a call through uncounted or undercharged, each named for the leak it
closes (found by an adversarial pass over the limits). A test per leak: it failed before."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any

import httpx
import httpx2
import litellm
import openai
import pytest
from raw_server import RawServer, chat_events, response

from quota_hooks import (
    Estimate,
    QuotaExceededError,
    QuotaManager,
    QuotaPolicy,
    RateLimitedError,
    UsageRecord,
)
from quota_hooks.adapters.langchain import QuotaCallbackHandler
from quota_hooks.adapters.litellm import QuotaLogger, guarded
from quota_hooks.adapters.openai import track_openai
from quota_hooks.testing import FakeOpenAI, FakeUsage, ManualClock

MSG = [{"role": "user", "content": "hi"}]
LIBS = {"httpx2": httpx2, "httpx": httpx}


def per_day(n: int, **more: Any) -> QuotaPolicy:
    return QuotaPolicy(rpm=None, tpm=None, rpd=n, tpd=None, monthly_budget_usd=None,
                       mode="raise", **more)


def records(m: QuotaManager) -> list[UsageRecord]:
    return m.store.recent("workspace:ws", 1000)


# ---------------------------------------------------------------------------- the wire
@pytest.mark.parametrize("content_type", ["Text/Event-Stream", "application/x-ndjson",
                                          "text/plain", None])
def test_a_stream_of_another_content_type_is_still_read(content_type: str | None) -> None:
    """The SDK streams whatever a stream request gets back; so do we."""
    with RawServer(lambda r: response(chat_events(), content_type=content_type)) as url:
        m = QuotaManager(QuotaPolicy.unlimited())
        client = track_openai(openai.OpenAI(api_key="k", base_url=url, max_retries=0),
                              workspace_id="ws", manager=m)
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                     stream=True))
    assert all(c.usage is None for c in chunks)  # our usage chunk did not reach the caller
    [record] = records(m)
    assert (record.input_tokens, record.output_tokens, record.estimated) == (1_000, 3_000, False)


@pytest.mark.parametrize("separator", [b"\n\r\n", b"\r\n\n", b"\r\r\n", b"\n\r", b"\r\n\r\n"])
def test_every_kind_of_blank_line_ends_an_event(separator: bytes) -> None:
    body = chat_events(separator=separator)
    with RawServer(lambda r: response(body)) as url:
        m = QuotaManager(QuotaPolicy.unlimited())
        client = track_openai(openai.OpenAI(api_key="k", base_url=url, max_retries=0),
                              workspace_id="ws", manager=m)
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                     stream=True))
    assert [c.choices[0].delta.content for c in chunks] == [f"w{i} " for i in range(5)]
    [record] = records(m)
    assert (record.input_tokens, record.output_tokens, record.estimated) == (1_000, 3_000, False)


def test_a_json_body_with_a_bom_is_read() -> None:
    body = b"\xef\xbb\xbf" + b'{"id":"x","object":"chat.completion","model":"gpt-4o-mini",' \
        b'"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":3000,' \
        b'"total_tokens":4000}}'
    with RawServer(lambda r: response(body, content_type="application/json",
                                      chunked=False)) as url:
        m = QuotaManager(QuotaPolicy.unlimited())
        client = track_openai(openai.OpenAI(api_key="k", base_url=url, max_retries=0),
                              workspace_id="ws", manager=m)
        # Whether the SDK accepts a BOM is its business; counting the call is ours.
        with contextlib.suppress(Exception):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    [record] = records(m)
    assert (record.input_tokens, record.output_tokens, record.estimated) == (1_000, 3_000, False)


@pytest.mark.parametrize("lib", LIBS)
def test_a_read_compressed_body_with_injected_usage(lib: str) -> None:
    """An inner transport read a gzip body the provider sent although it was asked for
    identity: counted exactly, and the caller never sees our usage chunk."""
    http = LIBS[lib]
    fake = FakeOpenAI(FakeUsage(1_000, 3_000), compress="gzip", force_compress=True)

    def handler(request: Any) -> Any:
        reply = fake.wire(fake.handle(request.method, str(request.url), dict(request.headers),
                                      request.read()), request.headers.get("accept-encoding", ""))
        read = http.Response(reply.status, headers=reply.headers, content=b"".join(reply.chunks))
        assert read.headers["content-encoding"] == "gzip"
        return read

    m = QuotaManager(QuotaPolicy.unlimited())
    client = track_openai(openai.OpenAI(
        api_key="k", base_url="http://fake/v1", max_retries=0,
        http_client=http.Client(transport=http.MockTransport(handler))),
        workspace_id="ws", manager=m)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                 stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    [record] = records(m)
    assert (record.input_tokens, record.output_tokens, record.estimated) == (1_000, 3_000, False)
    assert m.tracking_errors == 0


# ---------------------------------------------------------------------------- abandoned calls
def test_an_openai_stream_never_read_nor_closed_keeps_its_hold() -> None:
    """Before: its reservation expired and gave the room back: 9 calls passed rpd=3."""
    clock = ManualClock()
    m = QuotaManager(per_day(3, reservation_ttl=60), clock=clock)
    client = track_openai(openai.OpenAI(api_key="k", base_url="http://fake/v1", max_retries=0,
                                        http_client=httpx2.Client(transport=FakeOpenAI()
                                                                  .transport())),
                          workspace_id="ws", manager=m)
    opened, refused = [], 0
    for _ in range(9):
        try:
            opened.append(client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                                         stream=True))
        except RateLimitedError:
            refused += 1
        clock.advance(120)  # past every reservation's ttl
    assert (len(opened), refused) == (3, 6)


def test_a_langchain_stream_left_early_is_charged_its_estimate() -> None:
    """Before: recorded as a GeneratorExit error with 0 tokens."""
    from langchain_openai import ChatOpenAI

    m = QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=None, tpd=3_000,
                                 monthly_budget_usd=None, mode="raise"))
    llm = ChatOpenAI(model="gpt-4o-mini", api_key="k", base_url="http://fake/v1",
                     max_retries=0, max_tokens=1_000, stream_usage=True,
                     http_client=httpx2.Client(transport=FakeOpenAI(chunks=8).transport()),
                     callbacks=[QuotaCallbackHandler(manager=m, workspace_id="ws")])
    started = 0
    for _ in range(10):
        try:
            for _chunk in llm.stream("x" * 400):
                break
        except QuotaExceededError:
            continue
        started += 1
    assert started == 2  # 100 + 1,000 estimated per call: a third does not fit 3,000
    assert all(r.estimated and r.estimate_reason == "the stream was closed before it ended"
               for r in records(m))


@pytest.mark.usefixtures("clean_litellm_callbacks")
def test_a_litellm_stream_left_early_keeps_its_hold() -> None:
    clock = ManualClock()
    m = QuotaManager(per_day(4, reservation_ttl=60), clock=clock)
    quota_logger = QuotaLogger(manager=m, default_workspace="ws")
    litellm.callbacks = [quota_logger]
    completion = guarded(litellm.completion, quota_logger)
    with FakeOpenAI(chunks=6).serve() as url:
        started = 0
        for _ in range(9):
            try:
                stream = completion(model="openai/gpt-4o-mini", messages=MSG, api_base=url,
                                    api_key="k", stream=True)
            except RateLimitedError:
                continue
            for _chunk in stream:
                break  # left early: litellm records nothing
            started += 1
            clock.advance(120)
    assert started == 4


# ---------------------------------------------------------------------------- estimates
def test_per_image_models_reserve_their_price() -> None:
    """Before: images reserved $0: 40 concurrent dall-e-3 calls charged $1.60 on $0.20."""
    m = QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=None, tpd=None,
                                 monthly_budget_usd=Decimal("0.20")))
    held = []
    for _ in range(40):
        with contextlib.suppress(QuotaExceededError):
            held.append(m.acquire("ws", Estimate(model="dall-e-3", api_method="images.generate",
                                                 provider="openai", images=1)))
    assert len(held) == 5  # $0.04 each
    assert all(r is not None and r.delta.cost_nanos == 40_000_000 for r in held)


def test_speech_and_token_billed_images_reserve_more_than_their_prompt() -> None:
    m = QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=None, tpd=None))
    tts = m.acquire("ws", Estimate(model="tts-1", api_method="audio.speech", provider="openai",
                                   characters=10_000))
    assert tts is not None and tts.delta.cost_nanos == 150_000_000  # $15 per 1M characters
    image = m.acquire("ws", Estimate(model="gpt-image-1", api_method="images.generate",
                                     provider="openai", input_tokens=20, images=2))
    prompt_only = m.acquire("ws", Estimate(model="gpt-image-1", provider="openai",
                                           input_tokens=20))
    assert image is not None and prompt_only is not None
    assert image.delta.cost_nanos > 100 * prompt_only.delta.cost_nanos


def test_through_the_transport_an_image_call_reserves_its_images() -> None:
    fake = FakeOpenAI()
    m = QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=None, tpd=None,
                                 monthly_budget_usd=Decimal("0.10")))
    client = track_openai(openai.OpenAI(api_key="k", base_url="http://fake/v1", max_retries=0,
                                        http_client=httpx2.Client(transport=fake.transport())),
                          workspace_id="ws", manager=m)
    sent = 0
    for _ in range(5):
        try:
            client.images.generate(model="dall-e-3", prompt="a cat", n=1, size="1024x1792",
                                   quality="hd")
        except QuotaExceededError:
            continue
        sent += 1
    assert sent == 0 and not fake.requests  # $0.12 an image: not one fits $0.10


# ---------------------------------------------------------------------------- LiteLLM's figures
@pytest.mark.usefixtures("clean_litellm_callbacks")
def test_litellms_cost_of_untrusted_usage_is_not_trusted() -> None:
    from litellm.types.utils import ModelResponse
    from litellm.types.utils import Usage as LiteUsage

    m = QuotaManager(QuotaPolicy.unlimited())
    quota_logger = QuotaLogger(manager=m, default_workspace="ws", cost_source="litellm")
    reply = ModelResponse(model="gpt-4o")
    reply.usage = LiteUsage(prompt_tokens=0, completion_tokens=3, total_tokens=3)
    kwargs = {"model": "gpt-4o", "messages": [{"role": "user", "content": "y" * 400}],
              "max_tokens": 500, "litellm_call_id": "c1",
              "standard_logging_object": {"model": "gpt-4o", "response_cost": 0.00003,
                                          "call_type": "completion"}}
    quota_logger.log_success_event(kwargs=kwargs, response_obj=reply, start_time=None,
                                   end_time=None)
    [record] = records(m)
    assert record.estimated and "0 input tokens" in (record.estimate_reason or "")
    assert record.price_source != "litellm"  # the book prices the estimate
    assert record.cost is not None and record.cost > Decimal("0.005")  # 500 out at $10/1M


# ---------------------------------------------------------------------------- pairing
def test_a_paired_stream_cut_by_the_server_counts_once() -> None:
    """LangChain on a tracked client, the server drops the stream halfway: the transport
    records the attempt; the handler must not record a failure too."""
    from langchain_openai import ChatOpenAI

    body = chat_events()
    with RawServer(lambda r: response(body, cut_after=len(body) // 2)) as url:
        m = QuotaManager(QuotaPolicy.unlimited())
        tracked = track_openai(openai.OpenAI(api_key="k", base_url=url, max_retries=0),
                               workspace_id="ws", manager=m)
        llm = ChatOpenAI(model="gpt-4o-mini", api_key="k", base_url=url, max_retries=0,
                         client=tracked.chat.completions,
                         callbacks=[QuotaCallbackHandler(manager=m, workspace_id="ws")])
        with pytest.raises(Exception):  # noqa: B017 - the SDK's error for a cut stream
            for _chunk in llm.stream("hello"):
                pass
    [record] = records(m)  # one provider call, one record
    assert record.source == "openai" and record.estimated


def test_handler_records_a_run_whose_requests_got_no_answer() -> None:
    """The other side of the pairing rule: nothing reached the provider's answer."""
    m = QuotaManager(QuotaPolicy.unlimited())
    handler = QuotaCallbackHandler(manager=m, workspace_id="ws")
    from uuid import uuid4

    from langchain_core.messages import HumanMessage

    run_id = uuid4()
    handler.on_chat_model_start({}, [[HumanMessage("hi")]], run_id=run_id,
                                invocation_params={"model": "gpt-4o-mini"})
    handler.on_llm_error(ConnectionError("refused"), run_id=run_id)
    [record] = records(m)
    assert not record.success and record.error_type == "ConnectionError"


# ---------------------------------------------------------------------------- Redis
def test_a_redis_store_replays_its_backlog_at_exit() -> None:
    from quota_hooks import _exit
    from quota_hooks.storage.redis import RedisStore

    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    assert store in _exit._phases[2]  # closed (and its backlog replayed) at exit


def test_asyncio_cancel_of_a_langchain_stream_is_charged() -> None:
    """A cancelled astream() is a stream left early too."""
    from langchain_openai import ChatOpenAI

    m = QuotaManager(QuotaPolicy.unlimited())
    llm = ChatOpenAI(model="gpt-4o-mini", api_key="k", base_url="http://fake/v1",
                     max_retries=0, max_tokens=700, stream_usage=True,
                     http_async_client=httpx2.AsyncClient(
                         transport=FakeOpenAI(chunks=8).transport()),
                     callbacks=[QuotaCallbackHandler(manager=m, workspace_id="ws")])

    async def run() -> None:
        async for _chunk in llm.astream("hello"):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
    [record] = records(m)
    assert record.estimated and record.output_tokens == 700

