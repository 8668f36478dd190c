"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the server
on 127.0.0.1. In CI (``CI`` set) a missing browser fails the run; locally it skips.

The page runs under the server's Content-Security-Policy (never bypassed here): any policy
violation, console error or uncaught exception fails the test (apart from the connection
errors of the outage the first test causes on purpose).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.server import create_app
from quota_hooks.server.background import BackgroundServer

CHROMIUM = os.environ.get("QUOTA_HOOKS_TEST_CHROMIUM", "/usr/bin/chromium")
TOKEN = "browser-token-1"
ADMIN = "browser-admin-1"
SCREENSHOTS = Path(os.environ.get("QUOTA_HOOKS_SCREENSHOTS", "")) if os.environ.get(
    "QUOTA_HOOKS_SCREENSHOTS") else None
#: Headless, and nothing but 127.0.0.1: no update checks, sync, metrics or safe-browsing calls.
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-background-networking",
    "--disable-component-update", "--disable-default-apps", "--disable-sync",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--disable-breakpad", "--metrics-recording-only", "--no-first-run", "--no-pings",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
]
#: What the browser logs while the server is down, on purpose, in the first test.
OUTAGE = re.compile(r"ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|ERR_EMPTY_RESPONSE"
                    r"|WebSocket connection to '.*' failed")
WATCH_CSP = """document.addEventListener("securitypolicyviolation", (e) => {
  window.__quotaHooksCspViolation([e.effectiveDirective, e.blockedURI, e.sourceFile,
                                   e.lineNumber, e.sample].join(" | "));
});"""


def _browser_or_skip() -> str:
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        message = f"the dashboard test needs chromium at {CHROMIUM} (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def serve(manager: QuotaManager, port: int = 0, **options: Any) -> BackgroundServer:
    return BackgroundServer(create_app(manager, tokens=f"acme:{TOKEN}", max_updates_per_second=10,
                                       poll_interval=0.5, **options), port=port)


def call(manager: QuotaManager, n: int = 1, model: str = "gpt-4o-mini") -> None:
    for _ in range(n):
        manager.record(UsageRecord(workspace_id="acme", model=model, input_tokens=400,
                                   output_tokens=100))


@dataclass
class Problems:
    """What a page reported: CSP violations, console errors and uncaught exceptions."""

    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.expose_binding("__quotaHooksCspViolation",
                            lambda source, text: self.violations.append(text))
        page.add_init_script(WATCH_CSP)
        page.on("console", lambda message: self.errors.append(message.text)
                if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def assert_none(self, *, outage: bool = False) -> None:
        assert self.violations == [], self.violations
        errors = [e for e in self.errors if not (outage and OUTAGE.search(e))]
        assert errors == [], errors


@pytest.fixture
def manager() -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=20, tpm=100_000, monthly_budget_usd=1))
    yield manager
    manager.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_dashboard_updates_live_shows_disconnects_and_reconnects(
    manager: QuotaManager, browser: Any, tmp_path: Path
) -> None:
    """The whole page under its CSP: gauges, bars, tables, alerts and the chart render, an
    outage shows and heals, another workspace is refused, the picker lists workspaces; the
    browser reports no violation and no error (but the outage's connection errors)."""
    from playwright.sync_api import expect

    call(manager, 3)
    server = serve(manager)
    port = server.port
    problems = Problems()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        problems.watch(page)
        response = page.goto(f"http://127.0.0.1:{port}/dashboard/acme#token={TOKEN}")
        assert response is not None
        policy = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, policy
        expect(page.get_by_test_id("connection")).to_have_text("live")
        rpm = page.get_by_test_id("current-rpm")
        expect(rpm).to_have_text("3")
        expect(page.get_by_test_id("status")).to_have_text("normal")
        expect(page.get_by_test_id("recent-row")).to_have_count(3)

        call(manager, 14, model="gpt-4o")  # 17 of 20: past the 80% warning
        expect(rpm).to_have_text("17")  # no reload: the WebSocket brought it
        expect(page.get_by_test_id("status")).to_have_text("warning — rpm at 85%")
        expect(page.get_by_test_id("model-row")).to_have_count(2)
        expect(page.get_by_test_id("alert").first).to_contain_text("warning")
        expect(page.locator("#chart rect")).to_have_count(30)
        gauge = page.get_by_test_id("gauge-rpm").locator(".fill")
        expect(gauge).to_have_class(re.compile(r"\bwarning\b"))
        assert gauge.evaluate("e => e.style.width") == "85%"  # styled without inline style
        # The page is built from the embeddable element: <quota-budget layout="full"> draws
        # every card in its shadow root; the page's own markup holds none of them.
        built = page.evaluate("""() => {
          const element = document.querySelector("quota-budget");
          const shadow = element && element.shadowRoot;
          return {
            layout: element && element.getAttribute("layout"),
            gauges: shadow ? shadow.querySelectorAll("[data-testid^=gauge-]").length : 0,
            rows: shadow ? shadow.querySelectorAll("[data-testid=recent-row]").length : 0,
            chart: Boolean(shadow && shadow.querySelector("#chart svg rect")),
            status: Boolean(shadow && shadow.querySelector("[data-testid=status]")),
            outside: document.querySelectorAll("[data-testid]").length,
          };
        }""")
        rows = page.get_by_test_id("recent-row").count()
        assert rows >= 3 and built == {"layout": "full", "gauges": 5, "rows": rows,
                                       "chart": True, "status": True, "outside": 0}, built
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        if SCREENSHOTS is not None:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
        problems.assert_none()

        server.stop()
        expect(page.get_by_test_id("connection")).to_contain_text("disconnected")
        expect(page.get_by_test_id("connection")).to_have_attribute("data-connected", "no")
        server = serve(manager, port)  # the same address: the page reconnects
        expect(page.get_by_test_id("connection")).to_have_text("live", timeout=20_000)
        call(manager)
        expect(rpm).to_have_text("18")
        problems.assert_none(outage=True)
        problems.errors.clear()

        page.goto(f"http://127.0.0.1:{port}/dashboard/other#token={TOKEN}")
        expect(page.get_by_test_id("connection")).to_contain_text("may not read other")
        page.goto(f"http://127.0.0.1:{port}/#token={TOKEN}")
        expect(page.locator("#workspaces a")).to_have_text(["acme"])
        expect(page.locator("#workspace")).to_have_text("all workspaces")
        expect(page.get_by_test_id("status")).to_be_hidden()
        if SCREENSHOTS is not None:
            page.screenshot(path=str(SCREENSHOTS / "dashboard-picker.png"), full_page=True)
        page.locator("#workspaces a").click()
        expect(page.get_by_test_id("connection")).to_have_text("live")
        expect(rpm).to_have_text("18")
        problems.assert_none()
    finally:
        server.stop()


def test_an_injected_inline_script_is_refused_by_the_page_policy(
    manager: QuotaManager, browser: Any
) -> None:
    """The attack the CSP is for: markup that reaches the page (say, through a bug in a
    renderer) cannot run script. The browser refuses an inline script, an inline handler
    and a markup sink, and reports each; the page keeps working."""
    from playwright.sync_api import expect

    call(manager)
    server = serve(manager)
    problems = Problems()
    try:
        page = browser.new_page()
        problems.watch(page)
        page.goto(f"http://127.0.0.1:{server.port}/dashboard/acme#token={TOKEN}")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        problems.assert_none()
        outcome = page.evaluate("""() => {
          const tried = [];
          const script = document.createElement("script");
          try { script.text = "window.__pwned = 'inline script'"; tried.push("script text"); }
          catch (e) { tried.push("script text refused"); }
          document.body.append(script);
          const img = document.createElement("img");
          try { img.setAttribute("onerror", "window.__pwned = 'handler'"); tried.push("handler"); }
          catch (e) { tried.push("handler refused"); }
          img.src = "data:,";
          document.body.append(img);
          try { document.body.insertAdjacentHTML("beforeend", "<b>hi</b>"); tried.push("sink"); }
          catch (e) { tried.push("sink refused"); }
          return tried;
        }""")
        assert "sink refused" in outcome, outcome
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None
        assert problems.violations, "the browser reported no violation"
        assert all(v.split(" | ")[0] in {"script-src-elem", "script-src-attr",
                                          "require-trusted-types-for"}
                   for v in problems.violations), problems.violations
        call(manager)
        expect(page.get_by_test_id("current-rpm")).to_have_text("2")
    finally:
        server.stop()


def test_too_many_dashboards_for_one_token_are_told_so(
    manager: QuotaManager, browser: Any
) -> None:
    """Past the token's socket cap, the page says why it gets no updates instead of
    reconnecting in a loop."""
    from playwright.sync_api import expect

    call(manager)
    server = serve(manager, max_connections_per_token=1)
    problems = Problems()
    try:
        first, second = browser.new_page(), browser.new_page()
        problems.watch(first)
        problems.watch(second)
        url = f"http://127.0.0.1:{server.port}/dashboard/acme#token={TOKEN}"
        first.goto(url)
        expect(first.get_by_test_id("connection")).to_have_text("live")
        second.goto(url)
        expect(second.get_by_test_id("connection")).to_contain_text(
            "too many open dashboards for this token")
        expect(first.get_by_test_id("connection")).to_have_text("live")
        problems.assert_none()
    finally:
        server.stop()


def test_the_dashboard_mounted_under_a_prefix_in_another_app(
    manager: QuotaManager, browser: Any
) -> None:
    """``quota_router(..., dashboard=True)`` under ``/internal/quota`` in an app with its own
    ``/`` and ``/healthz``: the picker, the live page (WebSocket, history chart) and a workspace
    id with a ``/`` all work there, under the router's CSP, and the app's routes are its own."""
    from playwright.sync_api import expect
    from test_server_mounting import host_app

    from quota_hooks.server import quota_router

    app = host_app(quota_router(manager, tokens=f"acme:{TOKEN},*:{ADMIN}", dashboard=True,
                                max_updates_per_second=10, poll_interval=0.5),
                   "/internal/quota")
    call(manager, 2)
    manager.record(UsageRecord(workspace_id="team/b", model="gpt-4o", input_tokens=10,
                               output_tokens=5))
    server = BackgroundServer(app)
    base = f"http://127.0.0.1:{server.port}"
    problems = Problems()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        problems.watch(page)
        for path, body in (("/", {"app": "home"}), ("/healthz", {"app": "healthy"})):
            answer = page.request.get(base + path)
            assert answer.status == 200 and answer.json() == body, path
        assert page.request.get(base + "/api/quota/workspaces").status == 404

        response = page.goto(f"{base}/internal/quota/#token={ADMIN}")
        assert response is not None
        policy = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy and "trusted-types 'none'" in policy, policy
        expect(page.locator("#workspaces a")).to_have_text(["acme", "team/b"])
        page.locator("#workspaces a", has_text="acme").click()
        page.wait_for_url(f"{base}/internal/quota/dashboard/acme#token={ADMIN}")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        rpm = page.get_by_test_id("current-rpm")
        expect(rpm).to_have_text("2")
        expect(page.locator("#chart rect")).to_have_count(30)  # the history API, relative
        call(manager, 3)
        expect(rpm).to_have_text("5")  # the WebSocket, relative

        page.goto(f"{base}/internal/quota/#token={ADMIN}")
        page.locator("#workspaces a", has_text="team/b").click()
        page.wait_for_url(f"{base}/internal/quota/dashboard/team%2Fb#token={ADMIN}")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        expect(page.get_by_test_id("workspace-picker")).to_have_value("team/b")  # an admin's
        expect(rpm).to_have_text("1")
        expect(page.locator("#chart rect")).to_have_count(30)
        # The same page with a trailing slash: the files are two levels up, and still found.
        page.goto(f"{base}/internal/quota/dashboard/acme/#token={TOKEN}")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        expect(page.locator("#workspace")).to_have_text("acme")
        expect(rpm).to_have_text("5")
        problems.assert_none()
    finally:
        server.stop()


def test_the_alert_history_policy_and_budget_projection_show_after_a_reload(
    browser: Any, tmp_path: Path
) -> None:
    """Alerts raised by another process (another manager on the same SQLite file, before the
    server started) show on load and again after a reload; the page says which policy is in
    force and draws the month's spend, its projection and the budget line."""
    from playwright.sync_api import expect

    from quota_hooks.storage import SQLiteStore

    path = tmp_path / "shared.db"
    app = QuotaManager(QuotaPolicy(rpm=10, mode="observe", monthly_budget_usd=1),
                       store=SQLiteStore(path))
    call(app, 10)  # warning and critical on rpm, kept in the store's history
    assert app.drain(10)
    app.set_policy("acme", QuotaPolicy(rpm=10, mode="observe", monthly_budget_usd=1,
                                       thresholds=(50, 90)))
    app.close()
    viewer = QuotaManager(store=SQLiteStore(path))  # the server's own: no policy in its code
    server = serve(viewer)
    problems = Problems()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems.watch(page)
        page.goto(f"http://127.0.0.1:{server.port}/dashboard/acme#token={TOKEN}")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        alerts = page.get_by_test_id("alert")
        expect(alerts).to_have_count(3)
        expect(alerts.first).to_contain_text("policy_changed")  # newest first
        expect(alerts.nth(1)).to_contain_text("critical")
        expect(alerts.nth(2)).to_contain_text("warning")
        expect(page.get_by_test_id("policy")).to_have_text(
            "In force: stored policy workspace:acme · version 2 · alerts at 50%, 90%")
        expect(page.get_by_test_id("projection-line")).to_have_count(1)
        expect(page.get_by_test_id("budget-line")).to_have_count(1)
        expect(page.get_by_test_id("budget-note")).to_contain_text("of $1.00")
        page.reload()
        expect(page.get_by_test_id("connection")).to_have_text("live")
        expect(page.get_by_test_id("alert")).to_have_count(3)
        if SCREENSHOTS is not None:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "dashboard-history.png"), full_page=True)
        problems.assert_none()
    finally:
        server.stop()
        viewer.close()


@pytest.mark.parametrize("width", [1400, 390])
def test_the_page_says_why_fits_its_columns_and_lets_an_admin_pick(
    browser: Any, tmp_path: Path, width: int
) -> None:
    """The badge says why ("warning — rpm at 85%"), a long model name wraps, the API-methods
    card shows its cost column in full, an admin token picks another workspace from the
    header, and the page reads at 390 px (no horizontal scroll); screenshots of both."""
    from playwright.sync_api import expect

    manager = QuotaManager(QuotaPolicy(rpm=20, tpm=100_000, monthly_budget_usd=1))
    call(manager, 17)
    long_name = "ft:gpt-4o-mini-2024-07-18:acme-research-division:support-triage-v12:AbCdEf12"
    manager.record(UsageRecord(workspace_id="acme", model=long_name, input_tokens=10,
                               output_tokens=5))
    manager.record(UsageRecord(workspace_id="beta", model="gpt-4o", input_tokens=10))
    server = BackgroundServer(create_app(manager, tokens=f"acme:{TOKEN},*:{ADMIN}",
                                         max_updates_per_second=10, poll_interval=0.5),
                              port=0)
    problems = Problems()
    try:
        page = browser.new_page(viewport={"width": width, "height": 900})
        problems.watch(page)
        page.goto(f"http://127.0.0.1:{server.port}/dashboard/acme#token={ADMIN}")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        expect(page.get_by_test_id("status")).to_have_text("warning — rpm at 90%")
        expect(page.get_by_test_id("model-row")).to_have_count(2)
        cost = page.get_by_test_id("method-cost").first
        expect(cost).to_contain_text("$")
        # The cost cell lies inside its card: nothing cut off, nothing scrolled.
        inside = cost.evaluate("""e => { const card = e.closest('section').getBoundingClientRect();
                                         const cell = e.getBoundingClientRect();
                                         return cell.right <= card.right + 0.5; }""")
        assert inside
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        name = page.get_by_test_id("model-row").filter(has_text="acme-research").locator("span")
        assert name.first.evaluate("e => e.getBoundingClientRect().right") <= width
        if SCREENSHOTS is not None:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"dashboard-{width}.png"), full_page=True)
        picker = page.get_by_test_id("workspace-picker")
        expect(picker).to_have_value("acme")
        picker.select_option("beta")
        page.wait_for_url(f"http://127.0.0.1:{server.port}/dashboard/beta#token={ADMIN}")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        expect(page.get_by_test_id("current-rpm")).to_have_text("1")
        problems.assert_none()
        # A workspace's own token sees one workspace: no picker.
        page.goto(f"http://127.0.0.1:{server.port}/dashboard/acme#token={TOKEN}")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        page.wait_for_timeout(300)
        expect(page.get_by_test_id("workspace-picker")).to_have_count(0)
        problems.assert_none()
    finally:
        server.stop()
        manager.close()
