"""A store that fails must not tell a WebSocket client where it lives or what it said.

Attack: a client with any valid token (or a page on an open server) learns the store's
address, database and error text (``RedisStore(127.0.0.1:6479/0 ...)``) from the
``quota_error`` frame, which the REST routes already hide behind a bare 503.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.errors import StorageError
from quota_hooks.server import create_app

TOKENS = "*:admin-token-1,a:token-a-123"
ADMIN, TOKEN_A = "admin-token-1", "token-a-123"
DETAIL = "RedisStore(127.0.0.1:6479/0 user=quota) refused: NOAUTH Authentication required"
SAFE = "the usage store is unavailable"


def call(manager: QuotaManager) -> None:
    manager.record(UsageRecord(workspace_id="a", model="gpt-4o-mini", input_tokens=10,
                               output_tokens=2))


@pytest.fixture
def manager() -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=100))
    call(manager)
    yield manager
    manager.close()


def break_the_store(manager: QuotaManager, monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """The store's reads fail with ``DETAIL`` while ``state["down"]``."""
    state = {"down": True}
    for name in ("counters", "breakdown", "workspaces"):  # the sync and the async face
        real = getattr(manager.store, name)

        def read(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            if state["down"]:
                raise StorageError(DETAIL)
            return _real(*args, **kwargs)

        monkeypatch.setattr(manager.store, name, read)
    return state


def test_the_websocket_error_frame_reveals_neither_the_store_address_nor_its_error(
    manager: QuotaManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = break_the_store(manager, monkeypatch)
    app = create_app(manager, tokens=TOKENS, max_updates_per_second=20, poll_interval=0.1)
    with caplog.at_level(logging.WARNING, logger="quota_hooks"), TestClient(app) as client:
        with client.websocket_connect(f"/api/quota/ws/a?token={TOKEN_A}") as ws:
            frame = ws.receive_json()
            assert frame == {"type": "quota_error", "data": SAFE}
            # The socket stays useful: once the store answers again, updates flow.
            state["down"] = False
            call(manager)
            while (frame := ws.receive_json())["type"] != "quota_update":
                assert frame == {"type": "quota_error", "data": SAFE}
            assert frame["data"]["requests_per_minute"]["current"] == 2
        # REST says the same, and no more.
        state["down"] = True
        rest = client.get("/api/quota/status/a", headers={"Authorization": f"Bearer {ADMIN}"})
        assert rest.status_code == 503 and rest.json() == {"detail": SAFE}
        health = client.get("/healthz")
        assert health.status_code == 503 and "6479" not in health.text
    # The details are for the operator: in the server's log.
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.exc_info[1] if r.exc_info else ''}"
        for r in caplog.records
    )
    assert "127.0.0.1:6479" in logged


def test_a_socket_opened_while_the_store_is_down_gets_the_safe_frame_only(
    manager: QuotaManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first frame of a new socket (read by the socket itself) and the frames the shared
    feed sends to sockets already open say the same fixed message."""
    app = create_app(manager, tokens=TOKENS, max_updates_per_second=20, poll_interval=0.1)
    with TestClient(app) as client, client.websocket_connect(
        f"/api/quota/ws/a?token={TOKEN_A}"
    ) as first:
        assert first.receive_json()["type"] == "quota_update"
        state = break_the_store(manager, monkeypatch)
        call(manager)
        frames = []
        while (frame := first.receive_json())["type"] != "quota_error":
            frames.append(frame)
        assert frame == {"type": "quota_error", "data": SAFE}
        with client.websocket_connect(f"/api/quota/ws/a?token={ADMIN}") as second:
            assert second.receive_json() == {"type": "quota_error", "data": SAFE}
        state["down"] = False
