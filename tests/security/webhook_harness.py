"""Helpers of the webhook security tests: loopback receivers, a fake resolver and a recording
httpx transport. Nothing here sends a packet beyond 127.0.0.0/8: the fake resolver answers the
names it is given and resolves anything else numerically only (``AI_NUMERICHOST``, no DNS)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from quota_hooks.alerts import Alert, AlertKind
from quota_hooks.testing import ManualClock


def alert(kind: AlertKind = AlertKind.WARNING) -> Alert:
    """A representative alert."""
    return Alert(kind=kind, workspace_id="acme", scope="workspace:acme", metric="rpm",
                 current=80, limit=100, percentage=80.0, message="Workspace 'acme' reached 80%",
                 at=ManualClock().datetime(), dedupe_key="alert:acme:rpm:warning")


@dataclass
class Received:
    """One request a :class:`Receiver` got."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A loopback HTTP server that answers POSTs by plan: ``"ok"``, ``"500"`` or
    ``"redirect:<location>"`` (a 307); once the plan is used up it answers ``"ok"``, or repeats
    its last step with ``repeat=True``. Header names are kept lower-cased."""

    def __init__(self, *plan: str, host: str = "127.0.0.1", port: int = 0,
                 repeat: bool = False) -> None:
        self.plan = list(plan)
        self.repeat = repeat
        self.received: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                step = receiver._next()
                if step.startswith("redirect:"):
                    self.send_response(307)
                    self.send_header("location", step.split(":", 1)[1])
                else:
                    self.send_response(500 if step == "500" else 200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host = host
        self.port: int = self.server.server_address[1]
        self.origin = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _next(self) -> str:
        if len(self.plan) > 1 or (self.plan and not self.repeat):
            return self.plan.pop(0)
        return self.plan[0] if self.plan else "ok"

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receivers(*plans: Sequence[str]) -> Iterator[list[Receiver]]:
    """One loopback :class:`Receiver` per plan, closed afterwards."""
    started = [Receiver(*plan) for plan in plans]
    try:
        yield started
    finally:
        for receiver in started:
            receiver.close()


def closed_port() -> int:
    """A 127.0.0.1 port that nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FakeDNS:
    """Replaces ``socket.getaddrinfo`` (which anyio, asyncio and httpcore all end up calling):
    each name in ``answers`` resolves to its next list of addresses, the last one repeating (a
    name whose answer changes between two lookups is DNS rebinding). Any other host is resolved
    numerically only, so an IP literal works and no DNS query is ever made. ``lookups`` lists
    the names asked, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 answers: dict[str, list[list[str]]]) -> None:
        self.answers = {name: list(seq) for name, seq in answers.items()}
        self.lookups: list[str] = []
        real = socket.getaddrinfo

        def fake(host: bytes | str | None, port: Any, family: int = 0, type: int = 0,
                 proto: int = 0, flags: int = 0) -> list[Any]:
            name = host.decode() if isinstance(host, bytes) else host
            if name in self.answers:
                self.lookups.append(name)
                seq = self.answers[name]
                addresses = seq.pop(0) if len(seq) > 1 else seq[0]
                return [self._info(address, port) for address in addresses]
            return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

        monkeypatch.setattr(socket, "getaddrinfo", fake)

    @staticmethod
    def _info(address: str, port: Any) -> tuple[Any, ...]:
        number = int(port or 0)
        if ":" in address:
            return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, number, 0, 0))
        return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, number))


@dataclass
class Seen:
    """One request a :class:`Recorder` transport got, as the network would have seen it."""

    url: httpx.URL
    headers: httpx.Headers
    sni_hostname: str | None
    body: bytes


@dataclass
class Recorder:
    """An ``httpx.MockTransport`` handler: records each request (the URL it would connect to,
    its headers and SNI name) and answers with ``respond`` (200 by default). Nothing connects."""

    respond: Callable[[httpx.Request], httpx.Response] = field(
        default=lambda request: httpx.Response(200))
    seen: list[Seen] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(Seen(request.url, request.headers,
                              request.extensions.get("sni_hostname"), request.read()))
        return self.respond(request)

    def transport(self) -> httpx.MockTransport:
        """The transport to give a sink."""
        return httpx.MockTransport(self)


def redirect_to(location: str, status: int = 307) -> Callable[[httpx.Request], httpx.Response]:
    """A :class:`Recorder` answer: always a redirect to ``location``."""
    return lambda request: httpx.Response(status, headers={"location": location})
