"""A token given in a WebSocket URL (``?token=``) must not reach a log, a close reason or a
frame.

Attack: whoever reads the server's logs (a log shipper, a shared log index, a support
engineer) collects API tokens from the access log lines of ``/api/quota/ws/...?token=...``,
which uvicorn writes for every request and every WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import logging.config
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.errors import StorageError
from quota_hooks.server import create_app, quota_router
from quota_hooks.server.background import BackgroundServer
from quota_hooks.server.logs import TokenRedactingFilter, redact_tokens

CANARY = "canary-" + secrets.token_hex(12)
ADMIN = "admin-token-1"
TOKENS = f"*:{ADMIN},a:{CANARY}"
UVICORN_LOGGERS = ("uvicorn.access", "uvicorn.error")


@pytest.fixture(autouse=True)
def _only_our_filters() -> Iterator[None]:
    """Other libraries redact uvicorn's lines too (importing litellm adds its own filters to
    uvicorn's loggers, process-wide): take theirs off for these tests, so that they prove
    what quota-hooks' filter does on its own."""
    saved = {name: list(logging.getLogger(name).filters) for name in UVICORN_LOGGERS}
    for name, filters in saved.items():
        for found in filters:
            if not type(found).__module__.startswith("quota_hooks"):
                logging.getLogger(name).removeFilter(found)
    yield
    for name, filters in saved.items():
        logger = logging.getLogger(name)
        for found in filters:
            if found not in logger.filters:
                logger.addFilter(found)


@pytest.fixture
def manager() -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=100))
    manager.record(UsageRecord(workspace_id="a", model="gpt-4o-mini", input_tokens=10,
                               output_tokens=2))
    yield manager
    manager.close()


class Lines(logging.Handler):
    """Keeps every record's formatted message."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def uvicorn_logs_at_info() -> Iterator[Lines]:
    """uvicorn's access and error loggers at INFO (BackgroundServer sets WARNING), with a
    handler that keeps their lines; restored afterwards."""
    lines = Lines()
    saved = {name: logging.getLogger(name).level for name in UVICORN_LOGGERS}
    for name in UVICORN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).addHandler(lines)
    try:
        yield lines
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).removeHandler(lines)


def test_a_token_in_the_websocket_url_never_reaches_the_access_log(
    manager: QuotaManager, capfd: pytest.CaptureFixture[str]
) -> None:
    """Through a real uvicorn server: HTTP requests and WebSocket handshakes (accepted,
    refused, another workspace, a percent-encoded parameter name) with the canary token in
    their query; neither uvicorn's own output nor the records hold it."""
    server = BackgroundServer(create_app(manager, tokens=TOKENS))
    base, ws_base = server.url, f"ws://127.0.0.1:{server.port}"

    async def sockets() -> list[Any]:
        seen = []
        for path in (f"/api/quota/ws/a?token={CANARY}", f"/api/quota/ws/a?x=1&token={CANARY}",
                     f"/api/quota/ws/a?%74oken={CANARY}", f"/api/quota/ws/b?token={CANARY}",
                     f"/api/quota/ws/a?token={CANARY}x"):
            async with websockets.connect(ws_base + path) as ws:
                try:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"])
                except websockets.ConnectionClosed as closed:
                    seen.append(closed.rcvd.code if closed.rcvd else None)
        return seen

    try:
        with uvicorn_logs_at_info() as lines:
            with httpx.Client(base_url=base) as http:
                assert http.get(f"/api/quota/status/a?token={CANARY}").status_code == 401
                assert http.get(f"/dashboard/a?token={CANARY}&x=1").status_code == 200
                assert http.get(f"/healthz?TOKEN={CANARY}").status_code == 200
            assert asyncio.run(sockets()) == [
                "quota_update", "quota_update", "quota_update", 4403, 4401]
    finally:
        server.stop()
    out, err = capfd.readouterr()
    logged = "\n".join([out, err, *lines.lines])
    # The requests were logged (so the test looks at real log lines) ...
    assert "/api/quota/status/a?token=" in logged and "/dashboard/a?token=" in logged
    assert '"WebSocket /api/quota/ws/a?token=' in logged
    assert "[redacted]" in logged
    # ... and not one of them holds the token.
    assert CANARY not in logged, [line for line in logged.splitlines() if CANARY in line]


def test_the_redaction_filter_is_installed_once_per_process(manager: QuotaManager) -> None:
    """Apps that mount the router get the filter too; creating many routers or apps, and
    uvicorn configuring its logging again, leave exactly one."""
    from uvicorn.config import LOGGING_CONFIG

    for _ in range(3):
        FastAPI().include_router(quota_router(manager, tokens=TOKENS))
        create_app(manager, tokens=TOKENS)
    logging.config.dictConfig(LOGGING_CONFIG)  # what uvicorn.Config does at start
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        redacting = [f for f in logger.filters if getattr(f, "redacts_tokens", False)]
        assert len(redacting) == 1, logger.filters
    record = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/api/quota/ws/a?token={CANARY}&b=2", "1.1", 200), None,
    )
    for filt in logging.getLogger("uvicorn.access").filters:
        filt.filter(record)
    assert CANARY not in record.getMessage()
    assert "/api/quota/ws/a?token=[redacted]&b=2" in record.getMessage()


def test_no_close_reason_or_frame_carries_the_token(
    manager: QuotaManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every way a socket can end or fail: an unknown token, another workspace, too many
    sockets, a store failure. None echoes the token it was given."""
    app = create_app(manager, tokens=TOKENS, max_connections_per_token=1)
    said: list[str] = []
    with TestClient(app) as client:
        for path in (f"/api/quota/ws/a?token={CANARY}x", f"/api/quota/ws/b?token={CANARY}"):
            with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(
                path
            ) as ws:
                ws.receive_json()
            said.append(f"{refused.value.code} {refused.value.reason}")
        with client.websocket_connect(f"/api/quota/ws/a?token={CANARY}") as first:
            said.append(json.dumps(first.receive_json()))
            with pytest.raises(WebSocketDisconnect) as busy, client.websocket_connect(
                f"/api/quota/ws/a?token={CANARY}"
            ) as ws:
                ws.receive_json()
            assert busy.value.code == 4429
            said.append(f"{busy.value.code} {busy.value.reason}")

        def down(*args: Any) -> Any:
            raise StorageError(f"store refused token {CANARY}")

        monkeypatch.setattr(manager.store, "counters", down)  # both faces
        with client.websocket_connect(f"/api/quota/ws/a?token={CANARY}") as failing:
            said.append(json.dumps(failing.receive_json()))
    assert len(said) == 5 and all(said)
    assert not [s for s in said if CANARY in s], said


# ---------------------------------------------------------------------- bearer credentials
#: ``Authorization: Basic`` of user ``a`` with the canary as its password.
BASIC = base64.b64encode(f"a:{CANARY}".encode()).decode()


@pytest.mark.parametrize(("line", "expected"), [
    pytest.param(f"< sec-websocket-protocol: quota-hooks, bearer.{CANARY}",
                 "< sec-websocket-protocol: quota-hooks, bearer.[redacted]", id="subprotocol"),
    pytest.param(f"Sec-WebSocket-Protocol: bearer.{CANARY}, quota-hooks",
                 "Sec-WebSocket-Protocol: bearer.[redacted], quota-hooks",
                 id="subprotocol-first"),
    pytest.param(f"< authorization: Bearer {CANARY}", "< authorization: Bearer [redacted]",
                 id="bearer"),
    pytest.param(f"Authorization: basic {BASIC}", "Authorization: basic [redacted]",
                 id="basic"),
    pytest.param(f"headers={{'authorization': 'Bearer {CANARY}'}}",
                 "headers={'authorization': 'Bearer [redacted]'}", id="quoted"),
    pytest.param(f"GET /api/quota/ws/a?token={CANARY} offered BEARER.{CANARY}",
                 "GET /api/quota/ws/a?token=[redacted] offered BEARER.[redacted]",
                 id="query-and-subprotocol"),
])
def test_redact_tokens_redacts_bearer_subprotocols_and_authorization(
    line: str, expected: str
) -> None:
    assert redact_tokens(line) == expected
    assert redact_tokens(expected) == expected  # redacting again changes nothing


def test_the_filter_redacts_credentials_in_a_records_arguments() -> None:
    """The WebSocket library logs each handshake header as ``"< %s: %s"`` with the name and
    value as arguments; a mapping of arguments is redacted too. Lines with no credential in
    them (a scheme without one, prose) are left as they are."""
    make = logging.getLogger("uvicorn.error").makeRecord
    records = [
        make("uvicorn.error", logging.DEBUG, __file__, 1, "< %s: %s",
             ("sec-websocket-protocol", f"quota-hooks, bearer.{CANARY}"), None),
        make("uvicorn.error", logging.DEBUG, __file__, 1, "< %s: %s",
             ("authorization", f"Bearer {CANARY}"), None),
        make("uvicorn.error", logging.DEBUG, __file__, 1, "< proxy-authorization: %(v)s",
             ({"v": f"Basic {BASIC}"},), None),
    ]
    for record in records:
        assert TokenRedactingFilter().filter(record) is True  # redacted, never dropped
    said = [record.getMessage() for record in records]
    assert said == ["< sec-websocket-protocol: quota-hooks, bearer.[redacted]",
                    "< authorization: Bearer [redacted]",
                    "< proxy-authorization: Basic [redacted]"]
    for prose in ("> WWW-Authenticate: Bearer", "a valid bearer token is required",
                  "> Sec-WebSocket-Protocol: quota-hooks"):
        assert redact_tokens(prose) == prose


@contextlib.contextmanager
def debug_server(app: Any, ws: str) -> Iterator[tuple[int, Lines]]:
    """``app`` on a real uvicorn server on 127.0.0.1 at log level debug (which makes the
    WebSocket implementation log every handshake header), with ``ws`` as its WebSocket
    implementation and a handler keeping every line of uvicorn's loggers; levels restored."""
    lines = Lines()
    names = (*UVICORN_LOGGERS, "uvicorn.asgi")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in UVICORN_LOGGERS:
        logging.getLogger(name).addHandler(lines)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="debug",
                                           lifespan="off", ws=ws, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "uvicorn did not start"
        yield server.servers[0].sockets[0].getsockname()[1], lines
    finally:
        server.should_exit = True
        thread.join(10)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        for name in UVICORN_LOGGERS:
            logging.getLogger(name).removeHandler(lines)


@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated",
                            "ignore::DeprecationWarning:websockets.legacy")
@pytest.mark.parametrize("ws", ["websockets", "websockets-sansio"])
def test_bearer_subprotocols_and_authorization_never_reach_the_debug_log(
    manager: QuotaManager, ws: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """What the dashboard sends (``Sec-WebSocket-Protocol: quota-hooks, bearer.<token>``),
    a refused token sent the same way, and ``Authorization: Bearer``/``Basic`` headers, to a
    real uvicorn server at debug level: the handshake headers are logged, the token never."""

    async def sockets(port: int) -> list[Any]:
        seen = []
        for protocols, headers in (
            (["quota-hooks", f"bearer.{CANARY}"], {}),
            ([f"bearer.{CANARY}x", "quota-hooks"], {}),
            (["quota-hooks", f"bearer.{CANARY}"], {"Authorization": f"Bearer {CANARY}"}),
            (["quota-hooks", f"bearer.{CANARY}"], {"Authorization": f"Basic {BASIC}"}),
        ):
            async with websockets.connect(f"ws://127.0.0.1:{port}/api/quota/ws/a",
                                          subprotocols=protocols,
                                          additional_headers=headers) as socket:
                assert socket.subprotocol == "quota-hooks"
                try:
                    seen.append(json.loads(await asyncio.wait_for(socket.recv(), 5))["type"])
                except websockets.ConnectionClosed as closed:
                    seen.append(closed.rcvd.code if closed.rcvd else None)
        return seen

    with debug_server(create_app(manager, tokens=TOKENS), ws) as (port, lines):
        assert asyncio.run(sockets(port)) == [
            "quota_update", 4401, "quota_update", "quota_update"]
    out, err = capfd.readouterr()
    logged = "\n".join([out, err, *lines.lines])
    # Not one line holds the token ...
    leaks = [line for line in logged.splitlines() if CANARY in line or BASIC in line]
    assert not leaks, leaks
    # ... and the handshake headers were logged (so the test looked at real debug lines).
    assert "< sec-websocket-protocol: quota-hooks, bearer.[redacted]" in logged
    assert "< sec-websocket-protocol: bearer.[redacted], quota-hooks" in logged
    assert "< authorization: Bearer [redacted]" in logged
    assert "< authorization: Basic [redacted]" in logged
