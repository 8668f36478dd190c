"""A raw-socket HTTP server on 127.0.0.1 that answers exactly the bytes a test gives it: the
wire as odd providers and proxies write it (other content types, mixed line ends, a body cut
in the middle), which a well-behaved server library would tidy up."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

Answer = Callable[[dict[str, Any]], bytes]


def chat_events(model: str = "gpt-4o-mini", *, prompt: int = 1_000, completion: int = 3_000,
                separator: bytes = b"\n\n", pieces: int = 5) -> bytes:
    """An OpenAI chat stream, usage chunk included, events ended by ``separator``."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": model}
    events = [{**base, "choices": [{"index": 0, "delta": {"content": f"w{i} "},
                                    "finish_reason": None}], "usage": None}
              for i in range(pieces)]
    events.append({**base, "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion}})
    out = b"".join(b"data: " + json.dumps(e).encode() + separator for e in events)
    return out + b"data: [DONE]" + separator


def response(body: bytes, *, content_type: str | None = "text/event-stream",
             chunked: bool = True, cut_after: int | None = None,
             headers: dict[str, str] | None = None) -> bytes:
    """The bytes of an HTTP/1.1 answer; ``cut_after``: the connection drops after that many
    body bytes (mid-stream); ``headers``: more header lines (``content-encoding``, say: the
    body is then given already encoded)."""
    head = b"HTTP/1.1 200 OK\r\nconnection: close\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n".encode()
    if content_type is not None:
        head += f"content-type: {content_type}\r\n".encode()
    if cut_after is not None:
        body = body[:cut_after]
    if chunked:
        head += b"transfer-encoding: chunked\r\n\r\n"
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in _pieces(body, 40))
        return head + framed + (b"" if cut_after is not None else b"0\r\n\r\n")
    length = len(body) if cut_after is None else len(body) + 1000
    return head + f"content-length: {length}\r\n\r\n".encode() + body


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


class RawServer:
    """``with RawServer(answer) as base_url:``; ``answer(request_json)`` gives the bytes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.lines: list[str] = []
        """The request line of each request (``"GET /v1/responses/r1 HTTP/1.1"``)."""
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def __enter__(self) -> str:
        threading.Thread(target=self._loop, daemon=True).start()
        return self.base_url

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            self.lines.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += conn.recv(65536)
            try:
                request = json.loads(body) if body else {}
            except ValueError:  # a multipart upload (audio, image edits)
                request = {"raw_bytes": len(body)}
            self.requests.append(request)
            answer = self.answer(request)
            for piece in _pieces(answer, 64):
                try:
                    conn.sendall(piece)
                except OSError:  # the client gave up waiting (a timeout, a cancellation)
                    return
                time.sleep(0.0005)


class Mirror:
    """A 127.0.0.1 HTTP server that answers every GET with :attr:`body` as JSON: a mirror
    of a published file. ``with Mirror(body) as mirror:`` then ``mirror.url``; assign
    ``mirror.body`` to serve another; :meth:`stop` takes it away before the block ends."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = mirror.body
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/data.json"
        self._running = False

    def __enter__(self) -> Mirror:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._running = True
        return self

    def stop(self) -> None:
        """Stop answering (the port is closed)."""
        if self._running:
            self._server.shutdown()
            self._running = False
        self._server.server_close()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
