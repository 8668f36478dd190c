"""Server-sent events of one OpenAI-shaped response, read as bytes, sans I/O.

:class:`EventStream` takes the (decoded) body of an event stream as it arrives, in chunks
split anywhere, and hands each complete event's JSON to a :class:`Reader` when it may carry
something worth reading: the first event (for the model), events that carry a usage object,
Assistants run events. Every other event is scanned, not parsed.

When the tracker injected ``stream_options.include_usage``, the stream is given back as the
provider would have sent it without: the usage-only chunk is dropped, and the
``"usage": null`` member the provider then adds to every other chunk is cut out of its bytes
(nothing else of an event is touched).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Protocol

__all__ = ["EventStream", "Reader", "event_end", "usage_object_in", "without_null_usage"]


class Reader(Protocol):
    """What an :class:`EventStream` tells about the events it reads."""

    @property
    def response_model(self) -> str | None:
        """The model the response named so far (None: the next JSON event is parsed)."""

    def event(self) -> None:
        """One more data event (not ``[DONE]``): the output the caller was seen to get."""

    def take(self, data: Mapping[str, object]) -> None:
        """Learn from one JSON object of the response."""

    def lost(self, exc: BaseException) -> None:
        """Reading an event failed: it went to the caller as it came, unread."""


class EventStream:
    """The events of one response body: what it carries is handed to a :class:`Reader`."""

    __slots__ = ("_buffer", "_reader", "_scanned", "filtering")

    def __init__(self, reader: Reader, *, filtering: bool) -> None:
        self._reader = reader
        self.filtering = filtering
        """True: the caller gets the stream without the injected usage chunk (see above)."""
        # An incomplete event, grown in place: a long event (or a body with no blank line)
        # costs its length once, not once per chunk.
        self._buffer = bytearray()
        self._scanned = 0  # bytes of ``_buffer`` known to hold no event separator

    def feed(self, data: bytes) -> bytes:
        """Take body bytes; return the caller's share of the events they complete."""
        buffer = self._buffer
        if (not buffer and data.endswith(b"\n\n") and data.find(b"\n\n") == len(data) - 2
                and b"\r" not in data):
            return self._read(data)  # the usual chunk: one whole event, LF line ends
        buffer += data
        out: list[bytes] = []
        start = 0
        scan = max(0, self._scanned - 4)  # a blank line may straddle the previous chunk
        while True:
            end = event_end(buffer, max(scan, start))
            if end < 0:
                break
            out.append(self._read(bytes(buffer[start:end])))
            start = scan = end
        if start:
            del buffer[:start]
        self._scanned = len(buffer)
        return b"".join(out)

    def flush(self) -> bytes:
        """The body ended: the last event, even without its blank line."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return self._read(rest) if rest else b""

    def _read(self, raw: bytes) -> bytes:
        """One event, read; one that cannot be goes to the caller as it came."""
        try:
            return self._event(raw)
        except Exception as exc:  # RecursionError (a caller's deep JSON), or a bug of ours
            self._reader.lost(exc)
            return raw

    def _event(self, raw: bytes) -> bytes:
        """Learn from one event; returns what the caller gets of it."""
        name = b""
        body = raw.rstrip(b"\r\n")
        if body.startswith(b"data: ") and b"\n" not in body and b"\r" not in body:
            data = body[6:]  # the usual event: one data line
        else:
            if raw.find(b"data:") < 0:
                return raw
            data_lines = []
            # (a stream may open with a BOM)
            for line in raw.removeprefix(b"\xef\xbb\xbf").splitlines():
                if line.startswith(b"data:"):
                    data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
            data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
        if data == b"[DONE]":
            return raw
        reader = self._reader
        reader.event()
        has_usage = usage_object_in(data)
        if reader.response_model and not has_usage and not name.startswith(b"thread.run."):
            return without_null_usage(raw) if self.filtering else raw  # a content delta
        try:
            event = json.loads(data)
        except ValueError:  # not JSON (a RecursionError is not read either: see _read)
            return raw
        if not isinstance(event, dict):
            return raw
        inner = event.get("response")
        if isinstance(inner, dict):  # Responses API events
            reader.take(inner)
            return raw
        reader.take(event)
        if not self.filtering:
            return raw
        if isinstance(event.get("usage"), dict) and not event.get("choices"):
            return b""  # our injected usage-only chunk (with "choices": [] or without)
        return without_null_usage(raw)


_USAGE_KEY = b'"usage"'
_JSON_SPACE = b" \t\r\n"


def usage_object_in(data: bytes) -> bool:
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


def without_null_usage(raw: bytes) -> bytes:
    """``raw`` without its ``"usage": null`` member (the one that injecting
    ``include_usage`` adds to every chunk); a quoted ``"usage"`` can only be a key, since
    quotes inside JSON strings are escaped. A scan from each ``"usage"`` key: the first one
    whose value is ``null`` goes, with the comma that joins it to its neighbours."""
    at = raw.find(_USAGE_KEY)
    while at >= 0:
        cut = _null_member(raw, at)
        if cut is not None:
            return raw[:cut[0]] + raw[cut[1]:]
        at = raw.find(_USAGE_KEY, at + 1)
    return raw


def _null_member(raw: bytes, at: int) -> tuple[int, int] | None:
    """The span to cut for the member whose key starts at ``at``, if its value is ``null``
    and it is a member (after ``{`` or ``,``; before ``}`` or ``,``)."""
    n = len(raw)
    i = at + len(_USAGE_KEY)
    while i < n and raw[i] in _JSON_SPACE:
        i += 1
    if i >= n or raw[i] != 58:  # ":"
        return None
    i += 1
    while i < n and raw[i] in _JSON_SPACE:
        i += 1
    if raw[i:i + 4] != b"null":
        return None
    end = i + 4
    after = end
    while after < n and raw[after] in _JSON_SPACE:
        after += 1
    if after >= n or raw[after] not in b",}":
        return None
    before = at - 1
    while before >= 0 and raw[before] in _JSON_SPACE:
        before -= 1
    if before >= 0 and raw[before] == 44:  # ",": after another member, the comma goes too
        return before, end
    if before >= 0 and raw[before] == 123:  # "{": the first member, with the comma after it
        return at, after + 1 if raw[after] == 44 else end
    return None


# An event ends at a blank line: two line ends in a row, each of CRLF, LF or CR (any mix:
# "\n\r\n" is an LF line end and a CRLF blank line). A CR last in the buffer may be the start
# of a CRLF still on its way, so it waits for the next byte.
_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?=[^\n]))(?:\r\n|\n|\r(?=[^\n]))")


def event_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The index just after the first event of ``buffer`` at or after ``start`` (its blank
    line included), or -1 when no event is complete yet."""
    found = _BLANK_LINE.search(buffer, start)
    return -1 if found is None else found.end()
