"""``quota_router`` mounted in an app of its own: only the API by default, the dashboard,
``/healthz`` and ``/metrics`` when asked for, under any prefix, and usable with FastAPI's
``TestClient`` (whose host is ``testserver``). The same dashboard in Chromium is in
``test_dashboard_browser.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.server import create_app, quota_router
from quota_hooks.server.app import _relative_root

TOKENS = "*:admin-token-1,a:token-a-123"
ADMIN, TOKEN_A = "admin-token-1", "token-a-123"
PREFIX = "/internal/quota"


@pytest.fixture
def manager() -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=10))
    for ws in ("a", "team/a"):
        manager.record(UsageRecord(workspace_id=ws, model="gpt-4o-mini", input_tokens=10,
                                   output_tokens=2))
    yield manager
    manager.close()


def host_app(router: Any, prefix: str = PREFIX) -> FastAPI:
    """An app with its own ``/`` and ``/healthz``, the router under ``prefix``."""
    app = FastAPI()

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"app": "home"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"app": "healthy"}

    app.include_router(router, prefix=prefix)
    return app


def paths(app: FastAPI) -> set[str]:
    return {path for path in app.openapi()["paths"]} | {
        getattr(route, "path", "") for route in app.router.routes}


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def test_the_router_adds_only_the_api_by_default(manager: QuotaManager) -> None:
    app = FastAPI()
    app.include_router(quota_router(manager, tokens=TOKENS))
    with TestClient(app) as client:
        for path in ("/", "/dashboard/a", "/healthz", "/metrics",
                     "/quota-hooks/static/dashboard.js"):
            assert client.get(path).status_code == 404, path
        assert client.get("/api/quota/status/a", headers=admin()).status_code == 200
        assert client.get("/api/quota/workspaces", headers=admin()).json() == {
            "workspaces": ["a", "team/a"]}
        assert client.get("/api/quota/history/a", headers=admin()).status_code == 200
        with client.websocket_connect(f"/api/quota/ws/a?token={TOKEN_A}") as ws:
            assert ws.receive_json()["type"] == "quota_update"
    documented = set(app.openapi()["paths"])
    assert documented and all(p.startswith("/api/quota/") for p in documented), documented


def test_the_dashboard_health_and_metrics_are_opt_in(manager: QuotaManager) -> None:
    app = FastAPI()
    app.include_router(quota_router(manager, tokens=TOKENS, dashboard=True, healthz=True,
                                    metrics=True))
    with TestClient(app) as client:
        assert client.get("/").headers["content-type"].startswith("text/html")
        assert client.get("/dashboard/a").status_code == 200
        assert client.get("/quota-hooks/static/dashboard.js").status_code == 200
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=admin()).status_code == 200
    app = FastAPI()
    app.include_router(quota_router(manager, tokens=TOKENS, healthz=True))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 404  # one without the other


def test_under_a_prefix_the_apps_own_routes_are_untouched(manager: QuotaManager) -> None:
    app = host_app(quota_router(manager, tokens=TOKENS, dashboard=True, healthz=True))
    with TestClient(app) as client:
        assert client.get("/").json() == {"app": "home"}
        assert client.get("/healthz").json() == {"app": "healthy"}
        assert client.get("/api/quota/status/a", headers=admin()).status_code == 404
        assert client.get(f"{PREFIX}/healthz").json()["status"] == "ok"
        status = client.get(f"{PREFIX}/api/quota/status/team%2Fa", headers=admin())
        assert status.status_code == 200 and status.json()["workspace_id"] == "team/a"
        assert client.get(f"{PREFIX}/api/quota/status/a").status_code == 401
        with client.websocket_connect(f"{PREFIX}/api/quota/ws/a",
                                      subprotocols=["quota-hooks", f"bearer.{TOKEN_A}"]) as ws:
            assert ws.receive_json()["data"]["workspace_id"] == "a"
        # The prefix without its slash leads to the page (FastAPI's own slash redirect).
        bare = client.get(PREFIX, follow_redirects=False)
        assert bare.status_code in (307, 308) and bare.headers["location"].endswith(PREFIX + "/")


@pytest.mark.parametrize("page", ["/", "/dashboard/a", "/dashboard/a/", "/dashboard/team%2Fa",
                                  "/dashboard/team/a", "/dashboard/%C3%A9quipe"])
@pytest.mark.parametrize("prefix", ["", "/q", PREFIX, "/dashboard"])
def test_the_page_loads_its_files_relative_to_where_it_is_served(
    manager: QuotaManager, prefix: str, page: str
) -> None:
    """Whatever the prefix (even one named ``dashboard``) and workspace id (an encoded ``/``, a
    real one, a trailing slash), the page's script and style sheet resolve to the router's
    own files, and nothing in them points at an absolute path."""
    app = FastAPI()
    app.include_router(quota_router(manager, tokens=TOKENS, dashboard=True), prefix=prefix)
    with TestClient(app) as client:
        url = prefix + page
        html = client.get(url)
        assert html.status_code == 200 and "{{" not in html.text
        assets = re.findall(r"\b(?:src|href)=\"([^\"]+)\"", html.text)
        assets = [a for a in assets if not a.startswith("data:")]
        assert len(assets) == 2, assets
        for asset in assets:
            assert re.fullmatch(r"(\./|(\.\./)+)quota-hooks/static/dashboard\.(js|css)", asset)
            resolved = urljoin(url, asset)
            assert resolved.startswith(prefix + "/quota-hooks/static/"), (url, resolved)
            assert client.get(resolved).status_code == 200


def test_the_script_holds_no_absolute_path() -> None:
    from importlib import resources

    static = resources.files("quota_hooks.server").joinpath("static")
    for name in ("dashboard.js", "dashboard.html", "dashboard.css"):
        text = static.joinpath(name).read_text(encoding="utf-8")
        assert "/api/quota" not in text and '"/quota-hooks' not in text, name
        assert "location.host" not in text, name


@pytest.mark.parametrize(("path", "raw", "tail", "root"), [
    ("/", b"/", "", "./"),
    ("/x/", b"/x/", "", "./"),
    ("/x/dashboard/a", b"/x/dashboard/a", "dashboard/a", "../"),
    ("/x/dashboard/a/b", b"/x/dashboard/a%2Fb", "dashboard/a/b", "../"),
    ("/x/dashboard/a/b", b"/x/dashboard/a/b", "dashboard/a/b", "../../"),
    ("/x/dashboard/a/", b"/x/dashboard/a/", "dashboard/a/", "../../"),
    ("/x/dashboard/é", b"/x/dashboard/%C3%A9", "dashboard/é", "../"),
    ("/x/dashboard/", b"/x/dashboard/", "dashboard/", "../"),
    ("/p/x/dashboard/a", b"/p/x/dashboard/a", "dashboard/a", "../"),  # a proxy's root_path
])
def test_relative_root(path: str, raw: bytes, tail: str, root: str) -> None:
    assert _relative_root({"path": path, "raw_path": raw}, tail) == root
    assert _relative_root({"path": path}, tail) in {root, "../" * tail.count("/") or "./"}


def test_a_mounted_router_without_tokens_answers_the_test_client(
    manager: QuotaManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tokens (and none in the environment): the routes answer ``testserver`` (the app
    that mounts them decides who may call), but another site's page may not open the
    WebSocket, which browsers let any page do."""
    monkeypatch.delenv("QUOTA_HOOKS_API_TOKENS", raising=False)
    app = host_app(quota_router(manager, allowed_origins=["http://app.example"]))
    with TestClient(app) as client:
        assert client.get(f"{PREFIX}/api/quota/status/a").status_code == 200
        assert client.get(f"{PREFIX}/api/quota/workspaces",
                          headers={"Host": "quota.example"}).status_code == 200
        with client.websocket_connect(f"{PREFIX}/api/quota/ws/a") as ws:
            assert ws.receive_json()["type"] == "quota_update"
        for origin in ("http://testserver", "http://app.example"):
            with client.websocket_connect(f"{PREFIX}/api/quota/ws/a",
                                          headers={"Origin": origin}) as ws:
                assert ws.receive_json()["type"] == "quota_update"
        with pytest.raises(WebSocketDisconnect), client.websocket_connect(
            f"{PREFIX}/api/quota/ws/a", headers={"Origin": "http://evil.example"}
        ):
            pass


def test_the_standalone_app_without_tokens_stays_loopback_only(manager: QuotaManager) -> None:
    """What ``quota-hooks serve`` runs: without tokens, a host that is not loopback (DNS
    rebinding, or the test client's ``testserver``) is refused; explicitly asked for, a
    mounted router does the same."""
    for app in (create_app(manager, tokens=""),
                host_app(quota_router(manager, tokens="", loopback_only=True), "")):
        with TestClient(app) as client:
            refused = client.get("/api/quota/status/a")
            assert refused.status_code == 403 and "loopback" in refused.json()["detail"]
        with TestClient(app, base_url="http://127.0.0.1:8000") as local:
            assert local.get("/api/quota/status/a").status_code == 200


def test_tokens_work_under_the_test_client_with_every_route(manager: QuotaManager) -> None:
    """With tokens, ``loopback_only`` changes nothing: the test client's host is served."""
    app = host_app(quota_router(manager, tokens=TOKENS, loopback_only=True, metrics=True))
    with TestClient(app) as client:
        assert client.get(f"{PREFIX}/api/quota/status/a",
                          headers={"Authorization": f"Bearer {TOKEN_A}"}).status_code == 200
        assert client.get(f"{PREFIX}/api/quota/status/team%2Fa",
                          headers={"Authorization": f"Bearer {TOKEN_A}"}).status_code == 403
        assert client.get(f"{PREFIX}/metrics", headers=admin()).status_code == 200


def test_create_app_still_serves_everything(manager: QuotaManager) -> None:
    with TestClient(create_app(manager, tokens=TOKENS)) as client:
        for path in ("/", "/dashboard/a", "/quota-hooks/static/dashboard.js", "/healthz"):
            assert client.get(path).status_code == 200, path
        assert client.get("/metrics", headers=admin()).status_code == 200
        assert client.get("/api/quota/status/a", headers=admin()).status_code == 200


def test_create_app_can_itself_be_mounted(manager: QuotaManager) -> None:
    """``app.mount("/quota", create_app(...))``: Starlette's ``root_path``; the page's
    relative URLs still find the files."""
    outer = FastAPI()
    outer.mount("/quota", create_app(manager, tokens=TOKENS))
    with TestClient(outer) as client:
        html = client.get("/quota/dashboard/a").text
        src = re.findall(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", html)[0]
        assert client.get(urljoin("/quota/dashboard/a", src)).status_code == 200
        assert client.get("/quota/api/quota/status/a", headers=admin()).status_code == 200
