"""The OpenAI call object, sans I/O: request bytes in, facts out; response bytes in, one record.

These drive :class:`quota_hooks.adapters._openai_call.OpenAICall` with no HTTP library and no
manager (the transports over it are tested against a real 127.0.0.1 server in test_wire.py
and test_openai_adapter.py): what it reads from a request, what it sends instead when it
injects ``include_usage``, what the caller gets of an event stream fed at every split, and
the record it ends as.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from quota_hooks.adapters._openai_call import (
    DEFAULT_SCOPES_HEADER,
    DEFAULT_WORKSPACE_HEADER,
    WORKSPACE_HEADER,
    OpenAICall,
    RunMemory,
    parse_scopes,
)
from quota_hooks.context import WorkspaceContext
from quota_hooks.usage import Estimate

pytestmark = pytest.mark.unit

NOW = 1_780_000_000.0


class Estimator:
    """The manager's rule, counted: 4 bytes a token, 100 output tokens by default."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, workspace_id: str, facts: Estimate) -> Estimate:
        self.calls += 1
        output = facts.max_tokens if facts.max_tokens is not None else 100
        return replace(facts, input_tokens=facts.prompt_size // 4, output_tokens=output)


def new_call(headers: Mapping[str, str] | None = None, *, path: str = "/v1/chat/completions",
             context: WorkspaceContext | None = None, estimator: Estimator | None = None,
             failures: list[str] | None = None) -> OpenAICall:
    noted = failures if failures is not None else []
    return OpenAICall(
        verb="POST", path=path, server="127.0.0.1:8000", provider="openai",
        headers=headers or {}, context=context, memory=RunMemory(),
        estimator=estimator or Estimator(),
        failed=lambda stage, exc, ws: noted.append(f"{stage}: {exc}"))


def chat_body(**extra: Any) -> bytes:
    messages = [{"role": "user", "content": 'say "hi" \\ {not json} ' * 50}]
    return json.dumps({"messages": messages, "model": "gpt-4o-mini", **extra}).encode()


# ---------------------------------------------------------------------------------- request
def test_who_pays_header_then_block_then_default() -> None:
    block = WorkspaceContext("from-block", {"team": "ml"})
    default = {DEFAULT_WORKSPACE_HEADER: "a%2Fb", DEFAULT_SCOPES_HEADER: "team=core;user=u%3D1"}
    assert new_call(default).workspace_id == "a/b"
    assert new_call(default).scopes == {"team": "core", "user": "u=1"}
    call = new_call(default, context=block)
    assert (call.workspace_id, call.scopes) == ("from-block", {"team": "ml"})
    call = new_call({**default, WORKSPACE_HEADER: "own"}, context=block)
    assert (call.workspace_id, call.scopes) == ("own", {"team": "core", "user": "u=1"})
    assert new_call().workspace_id == "default"
    assert parse_scopes("=x;k=;a=b;;c%3B=d%3Be") == {"a": "b", "c;": "d;e"}


def test_request_facts() -> None:
    call = new_call({"x-stainless-retry-count": "2"})
    assert call.read_json(chat_body(max_completion_tokens=77), inject_stream_usage=True) is None
    facts = call.facts()
    assert (facts.model, facts.api_method, facts.max_tokens, call.attempt) == (
        "gpt-4o-mini", "chat.completions", 77, 2)
    assert facts.prompt_size == len(chat_body(max_completion_tokens=77))
    images = new_call(path="/v1/images/generations")
    images.read_json(json.dumps({"model": "gpt-image-1", "n": 3, "size": "1024x1024",
                                 "quality": True}).encode(), inject_stream_usage=True)
    assert (images.facts().images, images.facts().image_size,
            images.facts().image_quality) == (3, "1024x1024", None)  # a non-string quality
    speech = new_call(path="/v1/audio/speech")
    speech.read_json(b'{"model":"tts-1","input":"twelve chars"}', inject_stream_usage=True)
    assert speech.facts().characters == 12
    for junk in (b"", b"[1, 2]", b"not json", b'"a string"'):
        odd = new_call()
        assert odd.read_json(junk, inject_stream_usage=True) is None
        # unread, but its size still counts towards the estimate
        assert (odd.model, odd.facts().prompt_size) == (None, len(junk))


@pytest.mark.parametrize("options", [None, {"include_obfuscation": False}, "null", {}])
def test_include_usage_is_added_and_nothing_else_changes(options: Any) -> None:
    extra: dict[str, Any] = {"stream": True, "max_tokens": 5}
    if options == "null":
        extra["stream_options"] = None
    elif options is not None:
        extra["stream_options"] = options
    sent = chat_body(**extra)
    call = new_call()
    instead = call.read_json(sent, inject_stream_usage=True)
    assert instead is not None and call.inject and call.stream
    body = json.loads(instead)
    want = json.loads(sent)
    want["stream_options"] = {**(options if isinstance(options, dict) else {}),
                              "include_usage": True}
    assert body == want
    if options is None:  # spliced, not serialised again: the caller's bytes stay as sent
        assert instead.startswith(sent.rstrip()[:-1])


def test_no_injection_when_asked_already_or_switched_off_or_not_a_stream() -> None:
    asked = chat_body(stream=True, stream_options={"include_usage": True})
    for body, inject in ((asked, True), (chat_body(stream=True), False),
                         (chat_body(stream=False), True)):
        call = new_call()
        assert call.read_json(body, inject_stream_usage=inject) is None
        assert not call.inject
    embeddings = new_call(path="/v1/embeddings")
    assert embeddings.read_json(b'{"model":"e","input":"x","stream":true}',
                                inject_stream_usage=True) is None


# ---------------------------------------------------------------------------------- response
def chunk(content: str | None, usage: dict[str, int] | None = None, *,
          null_usage: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk",
                            "model": "gpt-4o-mini-2024-07-18",
                            "choices": [] if content is None else [
                                {"index": 0, "delta": {"content": content}}]}
    if usage is not None:
        data["usage"] = usage
    elif null_usage:
        data["usage"] = None
    return data


def sse(*events: dict[str, Any], sep: bytes = b"\n\n") -> bytes:
    lines = [b"data: " + json.dumps(event).encode() for event in events] + [b"data: [DONE]"]
    return b"".join(line + sep for line in lines)


USAGE = {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"])
@pytest.mark.parametrize("split", [1, 2, 7, 64, 10_000])
def test_a_stream_fed_at_any_split_loses_only_what_we_added(sep: bytes, split: int) -> None:
    wire = sse(chunk("Hel"), chunk("lo"), chunk("!"), chunk(None, USAGE), sep=sep)
    call = new_call()
    call.read_json(chat_body(stream=True), inject_stream_usage=True)
    assert call.respond(200, {"content-type": "text/event-stream"}) is True
    shown = b"".join(call.feed(wire[i:i + split]) for i in range(0, len(wire), split))
    shown += call.end()
    # what the provider would have sent without include_usage: no usage chunk, no usage: null
    assert shown == sse(chunk("Hel", null_usage=False), chunk("lo", null_usage=False),
                        chunk("!", null_usage=False), sep=sep)
    record = call.record(NOW)
    assert record is not None and call.record(NOW) is None  # one record per attempt
    assert (record.input_tokens, record.output_tokens, record.estimated) == (21, 3, False)
    assert record.model == "gpt-4o-mini-2024-07-18" and record.stream
    assert record.timestamp.timestamp() == NOW


def test_a_compressed_stream_is_read_through_the_decoder_it_is_given() -> None:
    class Gunzip:
        def __init__(self) -> None:
            self.inner = zlib.decompressobj(16 + zlib.MAX_WBITS)

        def decode(self, data: bytes) -> bytes:
            return self.inner.decompress(data)

        def flush(self) -> bytes:
            return self.inner.flush()

    wire = gzip.compress(sse(chunk("a"), chunk(None, USAGE)))
    observed = new_call()  # the caller asked for the usage: the wire's bytes go through as sent
    observed.read_json(chat_body(stream=True, stream_options={"include_usage": True}),
                       inject_stream_usage=True)
    assert observed.respond(200, {"content-type": "text/event-stream"}) is False
    observed.decode_with(Gunzip())
    shown = b"".join(observed.feed(wire[i:i + 5]) for i in range(0, len(wire), 5))
    assert shown + observed.end() == wire
    record = observed.record(NOW)
    assert record is not None and (record.input_tokens, record.output_tokens) == (21, 3)


def test_a_stream_closed_before_its_usage_settles_at_the_estimate_with_what_was_seen() -> None:
    estimator = Estimator()
    call = new_call(estimator=estimator)
    call.read_json(chat_body(stream=True, max_tokens=2), inject_stream_usage=True)
    call.respond(200, {"content-type": "text/event-stream"})
    call.feed(sse(chunk("a"), chunk("b"), chunk("c"))[:-3])  # closed before its usage
    record = call.record(NOW)
    assert record is not None and record.estimated
    assert record.output_tokens == 3  # the estimate said 2; the caller was seen to get 3 events
    assert record.input_tokens == len(chat_body(stream=True, max_tokens=2)) // 4
    assert estimator.calls == 1


def test_the_estimate_is_computed_once_per_attempt() -> None:
    estimator = Estimator()
    call = new_call(estimator=estimator)
    call.read_json(chat_body(), inject_stream_usage=True)
    call.estimate()
    call.respond(200, {"content-type": "application/json"})
    call.feed(json.dumps({"model": "m", "usage": USAGE}).encode())
    record = call.record(NOW)
    assert record is not None and record.total_tokens == 24
    assert estimator.calls == 1


@pytest.mark.parametrize("body", [
    b"", b"{", b'{"usage": null}', b'{"usage": {"prompt_tokens": "x"}}', b"\xef\xbb\xbf[]",
])
def test_a_body_without_trusted_usage_settles_at_the_estimate(body: bytes) -> None:
    call = new_call()
    call.read_json(chat_body(max_tokens=9), inject_stream_usage=True)
    call.respond(200, {"content-type": "application/json"})
    call.feed(body)
    call.end()
    record = call.record(NOW)
    assert record is not None and record.estimated and record.output_tokens == 9
    assert record.input_tokens == len(chat_body(max_tokens=9)) // 4


def test_a_corrupt_encoding_is_noted_and_the_caller_gets_the_wire() -> None:
    class Broken:
        def decode(self, data: bytes) -> bytes:
            raise zlib.error("incorrect header check")

        def flush(self) -> bytes:
            return b""

    failures: list[str] = []
    call = new_call(failures=failures)
    call.read_json(chat_body(), inject_stream_usage=True)
    call.respond(200, {"content-type": "application/json"})
    call.decode_with(Broken())
    assert call.feed(b"garbage") == b"garbage"
    assert call.end() == b""
    record = call.record(NOW)
    assert failures == ["read: incorrect header check"]
    assert record is not None and record.estimated
    assert record.estimate_reason == "the response body could not be read"


def test_an_error_body_names_its_type_and_counts_no_tokens() -> None:
    call = new_call()
    call.read_json(chat_body(), inject_stream_usage=True)
    call.respond(429, {"content-type": "application/json", "x-request-id": "req_9"})
    call.take_whole(b'{"error": {"type": "requests", "code": "rate_limit_exceeded"}}')
    record = call.record(NOW)
    assert record is not None and not record.success
    assert (record.error_type, record.request_id, record.status_code) == (
        "rate_limit_exceeded", "req_9", 429)
    assert (record.input_tokens, record.output_tokens) == (0, 0)


def test_a_finished_run_counts_once_however_often_it_is_polled() -> None:
    memory = RunMemory()
    run = {"object": "thread.run", "id": "run_1", "status": "completed",
           "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}}
    totals = []
    for _ in range(3):
        call = OpenAICall(verb="GET", path="/v1/threads/t/runs/run_1", server="s",
                          provider="openai", headers={}, context=None, memory=memory,
                          estimator=Estimator(), failed=lambda *a: None)
        call.respond(200, {"content-type": "application/json"})
        call.take_whole(json.dumps(run).encode())
        record = call.record(NOW)
        assert record is not None
        totals.append(record.total_tokens)
    assert totals == [42, 0, 0]


# ----------------------------------------------------------------- from an adversarial pass
@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_include_usage_is_added_to_a_body_in_any_json_encoding(encoding: str) -> None:
    sent = json.dumps(json.loads(chat_body(stream=True))).encode(encoding)
    instead = new_call().read_json(sent, inject_stream_usage=True)
    assert instead is not None
    assert json.loads(instead) == {**json.loads(sent), "stream_options": {"include_usage": True}}


def test_a_usage_chunk_without_choices_is_ours_and_dropped() -> None:
    call = new_call()
    call.read_json(chat_body(stream=True), inject_stream_usage=True)
    call.respond(200, {"content-type": "text/event-stream"})
    usage_only = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "usage": USAGE}
    shown = call.feed(sse(chunk("a"), usage_only)) + call.end()
    assert shown == sse(chunk("a", null_usage=False))
    record = call.record(NOW)
    assert record is not None and record.total_tokens == 24


def test_an_event_that_cannot_be_read_goes_through_and_the_rest_is_still_filtered() -> None:
    failures: list[str] = []
    call = new_call(failures=failures)
    call.read_json(chat_body(stream=True), inject_stream_usage=True)
    call.respond(200, {"content-type": "text/event-stream"})
    first = {**chunk("a"), "extra": "x"}
    # deeper than the JSON parser reads (json.dumps cannot write it either: written by hand)
    raw_first = json.dumps(first).replace('"extra": "x"', '"extra": ' + "[" * 100_000 + '"x"'
                                          + "]" * 100_000).encode()
    wire = b"data: " + raw_first + b"\n\n" + sse(chunk("b"), chunk(None, USAGE))
    shown = b"".join(call.feed(wire[i:i + 4096]) for i in range(0, len(wire), 4096)) + call.end()
    # the unreadable event is passed on whole, the next ones filtered as before
    assert shown == b"data: " + raw_first + b"\n\n" + sse(chunk("b", null_usage=False))
    assert failures and failures[0].startswith("read: ")
    record = call.record(NOW)
    assert record is not None and record.estimated  # its usage is not trusted after a failure
