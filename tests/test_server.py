"""The status API, the WebSocket and the dashboard routes, with FastAPI's TestClient."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.errors import ConfigurationError, StorageError
from quota_hooks.server import ApiTokens, create_app
from quota_hooks.testing import ManualClock

TOKENS = "*:admin-token-1,a:token-a-123,b:token-b-123,c:token-c-123"
ADMIN, TOKEN_A, TOKEN_B, TOKEN_C = "admin-token-1", "token-a-123", "token-b-123", "token-c-123"


def call(manager: QuotaManager, ws: str, **fields: Any) -> None:
    fields.setdefault("model", "gpt-4o-mini")
    fields.setdefault("input_tokens", 100)
    fields.setdefault("output_tokens", 20)
    manager.record(UsageRecord(workspace_id=ws, **fields))


@pytest.fixture
def manager(clock: ManualClock) -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=10, monthly_budget_usd=5), clock=clock)
    for ws, n in (("a", 3), ("b", 2), ("c", 1)):
        for _ in range(n):
            call(manager, ws)
    yield manager
    manager.close()


@pytest.fixture
def client(manager: QuotaManager) -> Iterator[TestClient]:
    with TestClient(create_app(manager, tokens=TOKENS, max_updates_per_second=2,
                               poll_interval=0.2)) as client:
        yield client


#: TestClient's WebSockets say "testserver" unless told otherwise.
LOCAL = {"host": "127.0.0.1:8000"}


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


ROUTES = ["/api/quota/status/{ws}", "/api/quota/status/{ws}?enhanced=true",
          "/api/quota/history/{ws}", "/api/quota/history/{ws}?by=model&since=7d"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("token", "expected"), [
    (None, 401), ("wrong-token-000", 401), (TOKEN_B, 403), (TOKEN_A, 200), (ADMIN, 200),
])
def test_every_route_with_good_absent_wrong_and_foreign_tokens(
    client: TestClient, route: str, token: str | None, expected: int
) -> None:
    response = client.get(route.format(ws="a"), headers=bearer(token))
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if expected == 403:
        assert "'a'" in response.json()["detail"]


def test_workspaces_lists_only_what_the_token_may_read(client: TestClient) -> None:
    assert client.get("/api/quota/workspaces").status_code == 401
    listed = {t: client.get("/api/quota/workspaces", headers=bearer(t)).json()["workspaces"]
              for t in (ADMIN, TOKEN_A, TOKEN_B)}
    assert listed == {ADMIN: ["a", "b", "c"], TOKEN_A: ["a"], TOKEN_B: ["b"]}


def test_status_is_the_seed_json_with_and_without_enhanced(client: TestClient) -> None:
    plain = client.get("/api/quota/status/a", headers=bearer(TOKEN_A)).json()
    assert plain["status"] == "normal"
    assert plain["requests_per_minute"] == {"current": 3, "limit": 10, "percentage": 30.0}
    assert plain["tokens_per_minute"]["current"] == 360
    assert "enhanced_tracking" not in plain
    full = client.get("/api/quota/status/a?enhanced=true", headers=bearer(TOKEN_A)).json()
    models = full["enhanced_tracking"]["models_breakdown"]
    assert models["gpt-4o-mini"]["request_count"] == 3
    assert len(full["enhanced_tracking"]["recent_activity"]) == 3
    assert full["thresholds"] == {"warning": 80.0, "critical": 95.0}


def test_history_by_day_model_and_method(client: TestClient, manager: QuotaManager,
                                         clock: ManualClock) -> None:
    clock.advance(86_400)
    call(manager, "a", model="gpt-4o")
    days = client.get("/api/quota/history/a?by=day", headers=bearer(ADMIN)).json()
    assert {d: r["request_count"] for d, r in days["rows"].items()} == {
        "2026-01-01": 3, "2026-01-02": 1}
    assert days["total_requests"] == 4 and days["total_cost_usd"] > 0
    models = client.get("/api/quota/history/a?by=model", headers=bearer(ADMIN)).json()
    assert set(models["rows"]) == {"gpt-4o", "gpt-4o-mini"}
    methods = client.get("/api/quota/history/a?by=method", headers=bearer(ADMIN)).json()
    assert methods["rows"]["chat.completions"]["request_count"] == 4
    since = client.get("/api/quota/history/a?since=2026-01-02", headers=bearer(ADMIN)).json()
    assert list(since["rows"]) == ["2026-01-02"]


def test_bad_query_values_are_named(client: TestClient) -> None:
    response = client.get("/api/quota/history/a?since=yesterday", headers=bearer(ADMIN))
    assert response.status_code == 422 and "since" in response.json()["detail"]
    assert "'yesterday'" in response.json()["detail"]
    huge = "1" + "0" * 400 + "d"
    response = client.get(f"/api/quota/history/a?since={huge}", headers=bearer(ADMIN))
    assert response.status_code == 422 and "since" in response.json()["detail"]
    future = client.get("/api/quota/history/a?since=2099-01-01", headers=bearer(ADMIN))
    assert future.status_code == 422 and "in the past" in future.json()["detail"]
    ancient = client.get("/api/quota/history/a?since=0001-01-01", headers=bearer(ADMIN))
    assert ancient.status_code == 200  # clamped to what stores keep
    response = client.get("/api/quota/history/a?by=color", headers=bearer(ADMIN))
    assert response.status_code == 422 and "by" in response.text


def test_healthz_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"


def test_an_open_server_needs_no_token(manager: QuotaManager) -> None:
    app = create_app(manager, tokens="")
    with TestClient(app, base_url="http://127.0.0.1:8000") as open_client:
        assert open_client.get("/api/quota/status/a").status_code == 200
        assert open_client.get("/api/quota/workspaces").json()["workspaces"] == ["a", "b", "c"]
        with open_client.websocket_connect(
            "/api/quota/ws/a", headers=LOCAL | {"Origin": "http://127.0.0.1:8000"}
        ) as ws:  # the server's own dashboard page
            assert ws.receive_json()["data"]["workspace_id"] == "a"


def test_an_open_server_refuses_other_sites_and_rebound_hosts(manager: QuotaManager) -> None:
    """Without tokens, a page of another site (browsers apply no CORS to WebSockets) and a
    DNS-rebound host name must not read the server."""
    app = create_app(manager, tokens="", cors_origins=["http://app.example"])
    with TestClient(app, base_url="http://127.0.0.1:8000") as open_client:
        rebound = open_client.get("/api/quota/workspaces", headers={"Host": "evil.example"})
        assert rebound.status_code == 403 and "loopback" in rebound.json()["detail"]
        other_site = open_client.get("/api/quota/status/a",
                                     headers={"Origin": "http://evil.example"})
        assert other_site.status_code == 403
        with pytest.raises(WebSocketDisconnect), open_client.websocket_connect(
            "/api/quota/ws/a", headers=LOCAL | {"Origin": "http://evil.example"}
        ):
            pass
        with open_client.websocket_connect(
            "/api/quota/ws/a", headers=LOCAL | {"Origin": "http://app.example"}  # CORS allows
        ) as ws:
            assert ws.receive_json()["type"] == "quota_update"
    with TestClient(app, base_url="http://localhost:8000") as local, local.websocket_connect(
        "/api/quota/ws/a", headers={"host": "localhost:8000", "Origin": "http://localhost:8000"}
    ) as ws:
        assert ws.receive_json()["type"] == "quota_update"


def test_workspace_ids_with_slashes_and_unicode(manager: QuotaManager,
                                                client: TestClient) -> None:
    for ws in ("team/a", "équipe 東京"):
        call(manager, ws)
        quoted = ws.replace("/", "%2F")
        assert client.get(f"/api/quota/status/{quoted}", headers=bearer(ADMIN)).json()[
            "workspace_id"] == ws
        assert client.get(f"/api/quota/history/{quoted}", headers=bearer(ADMIN)).json()[
            "total_requests"] == 1
        with client.websocket_connect(f"/api/quota/ws/{quoted}?token={ADMIN}") as live:
            assert live.receive_json()["data"]["workspace_id"] == ws
        assert client.get(f"/dashboard/{quoted}").status_code == 200


def test_a_store_failure_is_503_without_details(manager: QuotaManager,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any) -> Any:
        raise StorageError("redis://10.0.0.5:6379 refused")

    for name in ("counters", "workspaces", "breakdown"):  # the sync and the async face
        monkeypatch.setattr(manager.store, name, down)
    with TestClient(create_app(manager, tokens=TOKENS)) as broken:
        for path in ("/api/quota/status/a", "/api/quota/workspaces", "/api/quota/history/a"):
            response = broken.get(path, headers=bearer(ADMIN))
            assert response.status_code == 503 and "10.0.0.5" not in response.text
        health = broken.get("/healthz")
        assert health.status_code == 503 and "10.0.0.5" not in health.text


def test_cors_origins(manager: QuotaManager) -> None:
    app = create_app(manager, tokens=TOKENS, cors_origins=["http://app.example"])
    with TestClient(app) as cors_client:
        allowed = cors_client.get("/healthz", headers={"Origin": "http://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = cors_client.get("/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_token_entries_may_have_spaces() -> None:
    tokens = ApiTokens.parse(" acme : tok-acme1 , * : admin-token-2 ")
    access = tokens.access("tok-acme1")
    assert access is not None and access.allows("acme") and not access.allows("beta")
    admin = tokens.access("admin-token-2")
    assert admin is not None and admin.admin


def test_bad_token_configuration_names_the_entry() -> None:
    with pytest.raises(ConfigurationError, match="workspace:token"):
        ApiTokens.parse("justatoken")
    with pytest.raises(ConfigurationError, match="at least 8"):
        ApiTokens.parse("a:short")
    with pytest.raises(ConfigurationError, match="max_updates_per_second"):
        create_app(QuotaManager(), tokens="", max_updates_per_second=0)


# ---------------------------------------------------------------------- the WebSocket
def test_websocket_snapshot_then_updates_in_order(client: TestClient,
                                                  manager: QuotaManager) -> None:
    with client.websocket_connect(f"/api/quota/ws/a?token={TOKEN_A}") as ws:
        first = ws.receive_json()
        assert first["type"] == "quota_update"
        assert first["data"]["requests_per_minute"]["current"] == 3
        seen = [3]
        for target in range(4, 8):
            call(manager, "a")
            while seen[-1] < target:  # each update is newer than the one before it
                message = ws.receive_json()
                assert message["type"] == "quota_update"
                assert message["data"]["workspace_id"] == "a"
                current = message["data"]["requests_per_minute"]["current"]
                assert current > seen[-1]
                seen.append(current)
        assert seen == [3, 4, 5, 6, 7]


def test_websocket_coalesces_a_burst(client: TestClient, manager: QuotaManager) -> None:
    with client.websocket_connect(f"/api/quota/ws/b?token={TOKEN_B}") as ws:
        assert ws.receive_json()["data"]["requests_per_minute"]["current"] == 2
        for _ in range(50):
            call(manager, "b")
        updates = 0
        while True:
            message = ws.receive_json()
            if message["type"] != "quota_update":
                continue
            updates += 1
            assert message["data"]["workspace_id"] == "b"  # never another workspace's data
            if message["data"]["requests_per_minute"]["current"] == 52:
                break
        assert updates <= 3  # 50 changes, at most 2 updates a second


def test_websocket_pushes_alerts(client: TestClient, manager: QuotaManager) -> None:
    with client.websocket_connect(f"/api/quota/ws/c?token={TOKEN_C}") as ws:
        ws.receive_json()
        for _ in range(8):  # 9 of 10 requests a minute: past the 80% warning
            call(manager, "c")
        kinds = []
        while "warning" not in kinds:
            message = ws.receive_json()
            if message["type"] == "quota_alert":
                assert message["data"]["workspace_id"] == "c"
                kinds.append(message["data"]["kind"])
        assert kinds == ["warning"]


@pytest.mark.parametrize(("path", "code"), [
    ("/api/quota/ws/a", 4401),
    ("/api/quota/ws/a?token=wrong-token-000", 4401),
    (f"/api/quota/ws/a?token={TOKEN_B}", 4403),
])
def test_websocket_refuses_absent_wrong_and_foreign_tokens(
    client: TestClient, path: str, code: int
) -> None:
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(path) as ws:
        ws.receive_json()  # closed before any data
    assert refused.value.code == code


def test_an_alert_about_every_workspace_reaches_every_listener(
    client: TestClient, manager: QuotaManager
) -> None:
    with client.websocket_connect(f"/api/quota/ws/a?token={TOKEN_A}") as ws:
        ws.receive_json()
        manager.note_tracking_failure("release", RuntimeError("store down"))  # no workspace
        while (message := ws.receive_json())["type"] != "quota_alert":
            pass
        assert message["data"]["kind"] == "degraded"
        assert message["data"]["workspace_id"] == "*"


def test_binary_frames_from_a_client_are_ignored(client: TestClient,
                                                 manager: QuotaManager) -> None:
    with client.websocket_connect(f"/api/quota/ws/a?token={TOKEN_A}") as ws:
        ws.receive_json()
        ws.send_bytes(b"\x00\x01")
        ws.send_text("ping")
        call(manager, "a")
        assert ws.receive_json()["data"]["requests_per_minute"]["current"] == 4
    deadline = time.monotonic() + 5
    while manager.events.listeners and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.events.listeners == 0


def test_websocket_token_in_a_subprotocol(client: TestClient) -> None:
    with client.websocket_connect(
        "/api/quota/ws/a", subprotocols=["quota-hooks", f"bearer.{TOKEN_A}"]
    ) as ws:
        assert ws.accepted_subprotocol == "quota-hooks"
        assert ws.receive_json()["data"]["workspace_id"] == "a"
    assert client.app.state.manager.events.listeners == 0  # type: ignore[attr-defined]


def test_dashboard_pages_are_served(client: TestClient) -> None:
    for path, root in (("/", "./"), ("/dashboard/a", "../"), ("/dashboard/a/", "../../"),
                       ("/dashboard/team%2Fa", "../"), ("/dashboard/team/a", "../../")):
        page = client.get(path)
        assert page.status_code == 200
        assert "<title>quota-hooks</title>" in page.text
        # not inline, and relative: the page works under any prefix
        assert f'<script src="{root}quota-hooks/static/dashboard.js"' in page.text, path
        assert f'href="{root}quota-hooks/static/dashboard.css"' in page.text, path
        assert "{{" not in page.text
    script = client.get("/quota-hooks/static/dashboard.js")
    assert script.status_code == 200 and 'import "./quota-budget.js"' in script.text
    assert "/api/quota" not in script.text  # no absolute path to the API
    # The page is <quota-budget layout="full">: its modules are served beside the script,
    # and the monitor they read with opens the WebSocket at a path relative to the root.
    monitor = client.get("/quota-hooks/static/quota-monitor.js")
    assert monitor.status_code == 200 and "`api/quota/ws/${" in monitor.text
    assert client.get("/quota-hooks/static/quota-budget.js").status_code == 200
    assert client.get("/quota-hooks/static/quota-ui.js").status_code == 200
    assert client.get("/quota-hooks/static/dashboard.css").status_code == 200
    assert client.get("/quota-hooks/static/dashboard.html").status_code == 404
    assert client.get("/quota-hooks/static/..%2Fapp.py").status_code == 404


def test_a_stuck_client_slows_neither_the_others_nor_the_calls(manager: QuotaManager) -> None:
    """A client that never reads, on a real server: another client still sees every change
    up to the last, and record() keeps going (the stuck connection's sender just waits)."""
    import asyncio
    import base64
    import os
    import socket
    import threading

    import websockets

    from quota_hooks.server.background import BackgroundServer

    server = BackgroundServer(create_app(manager, tokens=TOKENS, max_updates_per_second=50,
                                         poll_interval=0.2))
    port = server.port
    stuck = socket.create_connection(("127.0.0.1", port))
    try:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        stuck.sendall(
            f"GET /api/quota/ws/a?token={TOKEN_A} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )  # and never reads again

        def traffic() -> None:
            for i in range(600):  # many models: large status messages fill the stuck socket
                call(manager, "a", model=f"model-{i % 60}")
                time.sleep(0.001)

        async def watch() -> int:
            url = f"ws://127.0.0.1:{port}/api/quota/ws/a?token={TOKEN_A}"
            async with websockets.connect(url, max_size=None) as ws:
                writer = threading.Thread(target=traffic)
                writer.start()
                seen = 0
                while seen < 603:  # 3 before, 600 during
                    message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if message["type"] == "quota_update":
                        seen = message["data"]["requests_per_day"]["current"]
                writer.join(60)
                assert not writer.is_alive()
                return seen

        assert asyncio.run(watch()) == 603
    finally:
        stuck.close()
        server.stop()
