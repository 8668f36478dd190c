"""The event stream reader (quota_hooks.adapters._sse), byte by byte: events split anywhere
come out whole and unchanged, the usage chunk is found without parsing every event, and the
``"usage": null`` member that injecting ``include_usage`` adds is cut out exactly."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from quota_hooks.adapters._sse import EventStream, usage_object_in, without_null_usage

pytestmark = pytest.mark.unit


class Seen:
    """A Reader that keeps what it was told."""

    def __init__(self, model: str | None = None) -> None:
        self.response_model = model
        self.events = 0
        self.taken: list[Mapping[str, object]] = []
        self.errors: list[BaseException] = []

    def event(self) -> None:
        self.events += 1

    def take(self, data: Mapping[str, object]) -> None:
        self.taken.append(data)
        model = data.get("model")
        if isinstance(model, str):
            self.response_model = model

    def lost(self, exc: BaseException) -> None:
        self.errors.append(exc)


def chunk(i: int, usage: object = None) -> dict[str, object]:
    return {"id": "c-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
            "choices": [] if usage else [{"index": 0, "delta": {"content": f"t{i}"}}],
            "usage": usage}


def body(separators: tuple[str, str] = (",", ":"), line_end: str = "\n") -> bytes:
    events = [chunk(i) for i in range(5)]
    events.append(chunk(5, {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}))
    text = "".join(f"data: {json.dumps(e, separators=separators)}{line_end * 2}"
                   for e in events)
    return (text + f"data: [DONE]{line_end * 2}").encode()


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
@pytest.mark.parametrize("split", [1, 3, 7, 64, 10_000])
def test_events_split_anywhere_read_the_same(separators: tuple[str, str], line_end: str,
                                             split: int) -> None:
    raw = body(separators, line_end)
    seen = Seen()
    stream = EventStream(seen, filtering=False)
    out = b"".join(stream.feed(raw[i:i + split]) for i in range(0, len(raw), split))
    out += stream.flush()
    assert out == raw  # not filtering: the caller gets every byte as it came
    assert seen.events == 6  # [DONE] is not an event of the response
    # Parsed: the first event (for the model) and the usage chunk; the others are scanned.
    assert [t.get("usage") for t in seen.taken] == [
        None, {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}]


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_filtering_gives_the_stream_as_if_usage_was_never_asked(
        separators: tuple[str, str]) -> None:
    seen = Seen()
    stream = EventStream(seen, filtering=True)
    out = stream.feed(body(separators)) + stream.flush()
    events = [e for e in out.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    parsed = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert len(parsed) == 5  # the injected usage-only chunk is gone
    assert all("usage" not in p for p in parsed)
    assert [p["choices"][0]["delta"]["content"] for p in parsed] == [f"t{i}" for i in range(5)]
    assert seen.taken[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5,
                                       "total_tokens": 12}


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"a":1,"usage":null}', b'{"a":1}'),  # last, compact (the usual bytes)
    (b'{"a":1,"usage":null,"b":2}', b'{"a":1,"b":2}'),  # in the middle
    (b'{"usage":null,"a":1}', b'{"a":1}'),  # first
    (b'{"usage":null}', b'{}'),  # alone
    (b'{"a": 1, "usage" : null }', b'{"a": 1 }'),  # spaced
    (b'{ "usage": null, "a": 1}', b'{  "a": 1}'),
    (b'{"a":1,\n  "usage":\tnull\n}', b'{"a":1\n}'),
    (b'{"a":1,"usage":{"total_tokens":3}}', b'{"a":1,"usage":{"total_tokens":3}}'),  # an object
    (b'{"a":1,"usage":"null"}', b'{"a":1,"usage":"null"}'),  # a string, not null
    (b'{"a":"\\"usage\\":null","usage":null}', b'{"a":"\\"usage\\":null"}'),  # escaped text
    (b'{"x":{"usage":{"n":1}},"usage":null}', b'{"x":{"usage":{"n":1}}}'),  # the null one goes
    (b'{"a":1}', b'{"a":1}'),
])
def test_without_null_usage(raw: bytes, expected: bytes) -> None:
    assert without_null_usage(raw) == expected
    json.loads(expected)  # still JSON


@pytest.mark.parametrize(("data", "found"), [
    (b'{"usage":{"total_tokens":1}}', True),
    (b'{"usage" :\n {"total_tokens":1}}', True),
    (b'{"usage":null}', False),
    (b'{"a":"\\"usage\\": {"}', False),  # inside a string the quotes are escaped
    (b'{"x":1}', False),
])
def test_usage_object_in(data: bytes, found: bool) -> None:
    assert usage_object_in(data) is found
