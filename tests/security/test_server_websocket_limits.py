"""WebSocket limits: sockets per token and per workspace, and clients that stop reading.

Attacks: one token opening sockets until the server runs out of memory and every tracked call
pays for one more listener (``manager.record()`` wakes each of them); a client that never reads
its socket, holding the server's send side (and its memory) forever; a flood of alerts queued
for such a client.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.alerts import Alert, AlertKind
from quota_hooks.server import create_app
from quota_hooks.server.background import BackgroundServer

TOKENS = "*:admin-token-1,a:token-a-123,a:token-a-456,b:token-b-123"
ADMIN, TOKEN_A, TOKEN_A2 = "admin-token-1", "token-a-123", "token-a-456"
CAP = 32  # the default of max_connections_per_token and max_connections_per_workspace


def call(manager: QuotaManager, ws: str = "a", model: str = "gpt-4o-mini") -> None:
    manager.record(UsageRecord(workspace_id=ws, model=model, input_tokens=100,
                               output_tokens=20))


@pytest.fixture
def manager() -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=None, tpd=None,
                                       monthly_budget_usd=None))
    call(manager)
    yield manager
    manager.close()


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def open_sockets(client: TestClient, stack: contextlib.ExitStack, attempts: int,
                 token: str = TOKEN_A, workspace: str = "a") -> tuple[int, Counter[Any]]:
    """``attempts`` sockets, each kept open: how many got a snapshot, and the refusals."""
    accepted, refused = 0, Counter[Any]()
    for _ in range(attempts):
        ws = stack.enter_context(client.websocket_connect(f"/api/quota/ws/{workspace}",
                                                          subprotocols=["quota-hooks",
                                                                        f"bearer.{token}"]))
        try:
            assert ws.receive_json()["type"] == "quota_update"
            accepted += 1
        except WebSocketDisconnect as closed:
            refused[(closed.code, closed.reason)] += 1
    return accepted, refused


def test_a_thousand_sockets_with_one_token_are_capped(manager: QuotaManager) -> None:
    """1,000 sockets with one token: 32 are served, the others closed with 4429 and a reason
    the page shows; the manager's listeners stay at most the cap, and come back to none."""
    with TestClient(create_app(manager, tokens=TOKENS)) as client:
        with contextlib.ExitStack() as stack:
            accepted, refused = open_sockets(client, stack, 1000)
            assert accepted == CAP
            assert refused == {(4429, "too many open dashboards for this token"): 1000 - CAP}
            assert 1 <= manager.events.listeners <= CAP
            # Another token on another workspace still gets in; on this one, the workspace
            # is full too.
            assert open_sockets(client, stack, 1, token=ADMIN, workspace="b") == (1, Counter())
            assert open_sockets(client, stack, 1, token=ADMIN) == (
                0, Counter({(4429, "too many open dashboards for this workspace"): 1}))
        assert eventually(lambda: manager.events.listeners == 0)
        with contextlib.ExitStack() as stack:  # the slots were given back
            assert open_sockets(client, stack, CAP) == (CAP, Counter())


def test_a_workspace_cap_holds_across_tokens(manager: QuotaManager) -> None:
    """Two tokens of one workspace share its cap; other workspaces are not affected."""
    app = create_app(manager, tokens=TOKENS, max_connections_per_token=3,
                     max_connections_per_workspace=4)
    with TestClient(app) as client, contextlib.ExitStack() as stack:
        assert open_sockets(client, stack, 3) == (3, Counter())
        assert open_sockets(client, stack, 2, token=TOKEN_A2) == (
            1, Counter({(4429, "too many open dashboards for this workspace"): 1}))
        assert open_sockets(client, stack, 2, token=ADMIN, workspace="b") == (2, Counter())
        assert open_sockets(client, stack, 1) == (
            0, Counter({(4429, "too many open dashboards for this token"): 1}))


def unlimited_manager() -> QuotaManager:
    """A manager without limits, its alert engine on (a sink that keeps nothing), so that two
    of them differ only in their listeners."""
    return QuotaManager(QuotaPolicy(rpm=None, rpd=None, tpm=None, tpd=None,
                                    monthly_budget_usd=None), sinks=[lambda alert: None])


def test_capped_sockets_do_not_slow_tracked_calls() -> None:
    """``record()`` p50 with the capped sockets of one token connected (after 1,000 attempts)
    stays within 1.2x of no listener at all.

    Two managers alike, each served by an app, their alert engines on, one with the sockets
    and one with none, record the same calls in turn (blocks of one call, in
    alternating order), 3 x 2,000 calls each: other load on this 2-core machine then slows
    both alike, where blocks seconds apart differ by far more than the listeners cost.
    """
    quiet, busy = unlimited_manager(), unlimited_manager()
    quiet_times: list[int] = []
    busy_times: list[int] = []
    clock = time.perf_counter_ns
    try:
        with TestClient(create_app(busy, tokens=TOKENS)) as client, \
                TestClient(create_app(quiet, tokens=TOKENS)), contextlib.ExitStack() as stack:
            accepted, refused = open_sockets(client, stack, 1000)
            listeners = busy.events.listeners
            for rounds, keep in ((1, False), (3, True)):  # a warm-up round, then the measure
                for i in range(rounds * 2000):
                    record = UsageRecord(workspace_id="a", model="gpt-4o-mini",
                                         input_tokens=100, output_tokens=20)
                    for manager, times in ((quiet, quiet_times), (busy, busy_times))[::(
                            1 if i % 2 else -1)]:
                        start = clock()
                        manager.record(record)
                        elapsed = clock() - start
                        if keep:
                            times.append(elapsed)
    finally:
        quiet.close()
        busy.close()
    ratio = statistics.median(busy_times) / statistics.median(quiet_times)
    assert ratio <= 1.2, (f"record() p50 {statistics.median(busy_times):.0f} ns with the "
                          f"sockets open ({listeners} listeners), "
                          f"{statistics.median(quiet_times):.0f} ns without: {ratio:.2f}x")
    assert accepted == CAP and sum(refused.values()) == 1000 - CAP
    assert 1 <= listeners <= CAP


# ---------------------------------------------------------------- clients that never read
def stuck_socket(port: int, token: str = TOKEN_A) -> socket.socket:
    """A WebSocket handshake with a tiny receive buffer, and no read ever after."""
    stuck = socket.create_connection(("127.0.0.1", port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    stuck.sendall(
        f"GET /api/quota/ws/a?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return stuck


def traffic_until(stop: threading.Event, manager: QuotaManager) -> threading.Thread:
    """Calls with many models (large status messages) until ``stop``."""
    def run() -> None:
        i = 0
        while not stop.is_set():
            call(manager, model=f"model-with-a-rather-long-name-{i % 200}")
            i += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def connects(port: int, token: str = TOKEN_A) -> bool:
    """True when a fresh socket with ``token`` gets its snapshot (not a 4429)."""
    import asyncio
    import json

    import websockets

    async def attempt() -> bool:
        url = f"ws://127.0.0.1:{port}/api/quota/ws/a?token={token}"
        async with websockets.connect(url, max_size=None) as ws:
            try:
                return bool(json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
                            == "quota_update")
            except websockets.ConnectionClosed:
                return False

    return asyncio.run(attempt())


def test_a_client_that_never_reads_is_dropped_after_a_bounded_send(
    manager: QuotaManager,
) -> None:
    """The server's send to a client that stopped reading times out: the socket is closed, its
    listener and its slot are given back (the next socket with the token gets in)."""
    server = BackgroundServer(create_app(
        manager, tokens=TOKENS, max_updates_per_second=50, poll_interval=0.2,
        max_connections_per_token=1, send_timeout=0.5,
    ))
    stop = threading.Event()
    stuck = stuck_socket(server.port)
    try:
        assert eventually(lambda: manager.events.listeners == 1)
        assert not connects(server.port)  # the stuck socket holds the token's one slot
        writer = traffic_until(stop, manager)
        dropped = eventually(lambda: manager.events.listeners == 0, timeout=20)
        stop.set()
        writer.join(10)
        assert dropped, "the stuck client still holds its listener"
        assert eventually(lambda: connects(server.port), timeout=5)
    finally:
        stop.set()
        stuck.close()
        server.stop()


def test_an_alert_flood_for_a_client_that_never_reads_is_bounded(
    manager: QuotaManager,
) -> None:
    """Alerts queued for a client that does not read: past a small backlog the socket is
    closed, long before the (generous) send timeout."""
    server = BackgroundServer(create_app(
        manager, tokens=TOKENS, max_updates_per_second=50, poll_interval=0.2,
        send_timeout=120, max_pending=8,
    ))
    stuck = stuck_socket(server.port)
    alert = Alert(kind=AlertKind.WARNING, workspace_id="a", scope="a", message="x" * 20_000,
                  at=datetime.now(UTC), dedupe_key="flood")
    try:
        assert eventually(lambda: manager.events.listeners == 1)
        started = time.monotonic()
        deadline = started + 30
        while manager.events.listeners and time.monotonic() < deadline:
            for _ in range(50):
                manager.events.alert(alert)
            time.sleep(0.005)
        assert manager.events.listeners == 0, "the stuck client's backlog grew without bound"
        assert time.monotonic() - started < 30
    finally:
        stuck.close()
        server.stop()
