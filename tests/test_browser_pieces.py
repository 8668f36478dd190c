"""The browser pieces in real Chromium, embedded in pages of an app of its own (served from
127.0.0.1 under a strict CSP: no inline script or style, no eval): ``<quota-budget>`` shows
live numbers, and a React page (react and react-dom 18's UMD builds, from the npm registry:
``.ci/run`` installs them into ``QUOTA_HOOKS_TEST_REACT_DIR``) re-renders through
``useQuotaMonitor`` on a WebSocket update. In CI a missing browser or React fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from test_dashboard_browser import SCREENSHOTS, Problems, browser, call  # noqa: F401 - the fixture

from quota_hooks import QuotaManager, QuotaPolicy
from quota_hooks.server import quota_router
from quota_hooks.server.background import BackgroundServer

TOKEN = "pieces-token-1"
SLASHED = "b64/tok+en=="  # a token the WebSocket subprotocol cannot carry
DOTS = "dots-token-1"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "require-trusted-types-for 'script'")
REACT_ENV = "QUOTA_HOOKS_TEST_REACT_DIR"

EMBED = """<!doctype html><html><head><meta charset="utf-8"><title>embed</title>
<script type="module" src="/pieces/api/quota/static/quota-budget.js"></script></head>
<body><aside><quota-budget workspace="acme" token="TOKEN"></quota-budget></aside></body></html>"""

REACT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>react</title>
<script src="/vendor/react.js"></script><script src="/vendor/react-dom.js"></script>
<script type="module" src="/app.js"></script></head><body><div id="root"></div></body></html>"""

REACT_APP = """import { useQuotaMonitor } from "/pieces/api/quota/static/use-quota-monitor.js";
const e = React.createElement;
let renders = 0;
function Budget() {
  const { quotaStatus, isLoading, error } = useQuotaMonitor({
    workspaceId: "acme", token: "TOKEN", enableWebSocket: true, autoRefresh: true,
    refreshInterval: 30000, showNotifications: false });
  renders += 1;
  if (error) return e("p", { id: "error" }, String(error.message));
  if (isLoading || !quotaStatus) return e("p", { id: "loading" }, "loading");
  return e("p", { id: "rpm", "data-renders": renders },
           String(quotaStatus.requests_per_minute.current));
}
ReactDOM.createRoot(document.getElementById("root")).render(e(Budget));
"""


PROBE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>probe</title>
<script type="module" src="/probe.js"></script></head><body></body></html>"""

# Sockets counted by a WebSocket the page wraps; each scenario's outcome lands in __probe.
PROBE = """import { QuotaMonitor } from "/pieces/api/quota/static/quota-monitor.js";
const sockets = [];
const Real = window.WebSocket;
window.WebSocket = class extends Real {
  constructor(...args) { super(...args); sockets.push(this); }
};
const probe = window.__probe = { errors: [] };
const open = () => sockets.filter((s) => s.readyState <= 1).length;
const wait = (ms) => new Promise((done) => setTimeout(done, ms));

// A token the subprotocol cannot carry: REST only, and no error shows the token.
const slashed = new QuotaMonitor({ workspaceId: "acme", token: "SLASHED",
                                   refreshInterval: 1000 });
slashed.addEventListener("error", (e) => probe.errors.push(String(e.detail.message)));
slashed.addEventListener("update", (e) => { probe.slashed = e.detail.workspace_id; });
slashed.start();
// A workspace called "..": a URL folds it away, so it is refused, by name.
try { new QuotaMonitor({ workspaceId: "..", token: "DOTS" }); }
catch (error) { probe.dots = String(error.message); }
await wait(1500);
probe.slashedSockets = sockets.length;
// stop() and start() again, and stop(): no socket is left open, no event comes after.
const flip = new QuotaMonitor({ workspaceId: "acme", token: "ACME_TOKEN" });
let after = 0;
flip.start(); flip.stop(); flip.start(); await wait(50); flip.stop();
flip.addEventListener("update", () => { after += 1; });
await wait(1500);
probe.openAfterStop = open();
probe.eventsAfterStop = after;
slashed.stop();
probe.done = true;
"""


def test_the_monitor_never_shows_a_token_and_stops_for_good(
        manager: QuotaManager, browser: Any) -> None:  # noqa: F811 - the fixture
    call(manager)
    server = BackgroundServer(app_with_pages(manager))
    problems = Problems()
    try:
        page = browser.new_page()
        problems.watch(page)
        page.goto(f"http://127.0.0.1:{server.port}/probe.html")
        for _ in range(150):  # (wait_for_function would eval in the page: the CSP refuses)
            if page.evaluate("() => Boolean(window.__probe && window.__probe.done)"):
                break
            page.wait_for_timeout(100)
        probe = page.evaluate("() => window.__probe")
        assert probe["slashed"] == "acme" and "cannot be read from a browser" in probe["dots"]
        assert probe["slashedSockets"] == 0  # REST only
        assert probe["openAfterStop"] == 0 and probe["eventsAfterStop"] == 0
        assert probe["errors"] and not any(SLASHED in e for e in probe["errors"])
        assert not any(SLASHED in e for e in problems.errors)
        call(manager)  # nothing listens any more: no error either
        page.wait_for_timeout(300)
        problems.assert_none()
    finally:
        server.stop()


def _react_dir() -> Path:
    found = os.environ.get(REACT_ENV)
    if not found or not (Path(found) / "react" / "umd").is_dir():
        message = f"the React page test needs {REACT_ENV} (.ci/run installs react from npm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(found)


def app_with_pages(manager: QuotaManager, react: Path | None = None) -> FastAPI:
    """An app of its own: the router under /pieces (its static files at
    /pieces/api/quota/static/), and the app's pages under a strict CSP."""
    app = FastAPI()
    app.include_router(quota_router(manager, tokens=f"acme:{TOKEN},acme:{SLASHED},..:{DOTS}"),
                       prefix="/pieces")
    headers = {"Content-Security-Policy": CSP}

    @app.get("/embed.html", response_class=HTMLResponse)
    async def embed() -> HTMLResponse:
        return HTMLResponse(EMBED.replace("TOKEN", TOKEN), headers=headers)

    @app.get("/react.html", response_class=HTMLResponse)
    async def react_page() -> HTMLResponse:
        return HTMLResponse(REACT_PAGE, headers=headers)

    @app.get("/app.js")
    async def react_app() -> Response:
        return Response(REACT_APP.replace("TOKEN", TOKEN), media_type="text/javascript",
                        headers=headers)

    @app.get("/probe.html", response_class=HTMLResponse)
    async def probe_page() -> HTMLResponse:
        return HTMLResponse(PROBE_PAGE, headers=headers)

    @app.get("/probe.js")
    async def probe() -> Response:
        return Response(PROBE.replace("SLASHED", SLASHED).replace("DOTS", DOTS)
                        .replace("ACME_TOKEN", TOKEN),
                        media_type="text/javascript", headers=headers)

    @app.get("/vendor/{name}.js")
    async def vendor(name: str) -> Response:
        assert react is not None
        path = {"react": react / "react/umd/react.production.min.js",
                "react-dom": react / "react-dom/umd/react-dom.production.min.js"}[name]
        return Response(path.read_bytes(), media_type="text/javascript", headers=headers)

    return app


@pytest.fixture
def manager() -> Any:
    manager = QuotaManager(QuotaPolicy(rpm=20, monthly_budget_usd=1))
    yield manager
    manager.close()


def test_quota_budget_embedded_in_a_page_shows_live_numbers(
        manager: QuotaManager, browser: Any) -> None:  # noqa: F811 - the fixture
    from playwright.sync_api import expect

    call(manager, 2)
    server = BackgroundServer(app_with_pages(manager))
    problems = Problems()
    try:
        page = browser.new_page(viewport={"width": 400, "height": 800})
        problems.watch(page)
        page.goto(f"http://127.0.0.1:{server.port}/embed.html")
        budget = page.locator("quota-budget").locator("[data-testid=quota-budget]")
        expect(budget).to_have_attribute("data-rpm", "2")
        expect(budget).to_contain_text("budget this month")
        expect(budget).to_contain_text("gpt-4o-mini")
        # The sidebar layout: the same gauges, rows and tables as the dashboard's (one
        # rendering code path), in a box of its own, and none of the dashboard's cards.
        expect(budget.get_by_test_id("current-rpm")).to_have_text("2")
        expect(budget.get_by_test_id("status")).to_have_text("normal")
        expect(budget.get_by_test_id("model-row")).to_have_count(1)
        expect(budget.get_by_test_id("recent-row")).to_have_count(2)
        expect(budget.get_by_test_id("method-requests")).to_have_text("2")
        expect(page.locator("quota-budget").locator("section, #chart")).to_have_count(0)
        box = page.locator("quota-budget").bounding_box()
        assert box is not None and box["width"] <= 382, box  # 360 px, its padding and border
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        call(manager, 3)
        expect(budget).to_have_attribute("data-rpm", "5")  # the WebSocket brought it
        expect(budget.get_by_test_id("recent-row")).to_have_count(5)
        if SCREENSHOTS is not None:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "sidebar.png"), full_page=True)
        problems.assert_none()
    finally:
        server.stop()


def test_a_react_page_rerenders_through_use_quota_monitor(
        manager: QuotaManager, browser: Any) -> None:  # noqa: F811 - the fixture
    from playwright.sync_api import expect

    react = _react_dir()
    call(manager, 1)
    server = BackgroundServer(app_with_pages(manager, react))
    problems = Problems()
    try:
        page = browser.new_page()
        problems.watch(page)
        page.goto(f"http://127.0.0.1:{server.port}/react.html")
        rpm = page.locator("#rpm")
        expect(rpm).to_have_text("1")
        before = int(rpm.get_attribute("data-renders") or 0)
        call(manager, 2)
        expect(rpm).to_have_text("3")  # a WebSocket update re-rendered it
        assert int(rpm.get_attribute("data-renders") or 0) > before
        problems.assert_none()
    finally:
        server.stop()


def test_the_pieces_are_served_under_the_routers_prefix(manager: QuotaManager) -> None:
    from fastapi.testclient import TestClient

    with TestClient(app_with_pages(manager)) as client:
        for name in ("quota-monitor.js", "use-quota-monitor.js", "quota-budget.js"):
            answer = client.get(f"/pieces/api/quota/static/{name}")
            assert answer.status_code == 200 and "javascript" in answer.headers["content-type"]
        assert client.get("/pieces/api/quota/static/other.js").status_code == 404
