"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the server
on 127.0.0.1. In CI (``CI`` set) a missing browser fails the run; locally it skips."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.server import create_app
from quota_hooks.server.background import BackgroundServer

CHROMIUM = os.environ.get("QUOTA_HOOKS_TEST_CHROMIUM", "/usr/bin/chromium")
TOKEN = "browser-token-1"
SCREENSHOTS = Path(os.environ.get("QUOTA_HOOKS_SCREENSHOTS", "")) if os.environ.get(
    "QUOTA_HOOKS_SCREENSHOTS") else None


def _browser_or_skip() -> str:
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        message = f"the dashboard test needs chromium at {CHROMIUM} (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def serve(manager: QuotaManager, port: int = 0) -> BackgroundServer:
    return BackgroundServer(create_app(manager, tokens=f"acme:{TOKEN}", max_updates_per_second=10,
                                       poll_interval=0.5), port=port)


def call(manager: QuotaManager, n: int = 1, model: str = "gpt-4o-mini") -> None:
    for _ in range(n):
        manager.record(UsageRecord(workspace_id="acme", model=model, input_tokens=400,
                                   output_tokens=100))


@pytest.fixture
def manager() -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=20, tpm=100_000, monthly_budget_usd=1))
    yield manager
    manager.close()


def test_the_dashboard_updates_live_shows_disconnects_and_reconnects(
    manager: QuotaManager, tmp_path: Path
) -> None:
    executable = _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    call(manager, 3)
    server = serve(manager)
    port = server.port
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox", "--headless"]
            )
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/dashboard/acme#token={TOKEN}")
            expect(page.get_by_test_id("connection")).to_have_text("live")
            rpm = page.get_by_test_id("current-rpm")
            expect(rpm).to_have_text("3")
            expect(page.get_by_test_id("status")).to_have_text("normal")
            expect(page.get_by_test_id("recent-row")).to_have_count(3)

            call(manager, 14, model="gpt-4o")  # 17 of 20: past the 80% warning
            expect(rpm).to_have_text("17")  # no reload: the WebSocket brought it
            expect(page.get_by_test_id("status")).to_have_text("warning")
            expect(page.get_by_test_id("model-row")).to_have_count(2)
            expect(page.get_by_test_id("alert").first).to_contain_text("warning")
            expect(page.locator("#chart rect")).to_have_count(30)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
            if SCREENSHOTS is not None:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)

            server.stop()
            expect(page.get_by_test_id("connection")).to_contain_text("disconnected")
            assert page.evaluate("document.body.dataset.connected") == "no"
            server = serve(manager, port)  # the same address: the page reconnects
            expect(page.get_by_test_id("connection")).to_have_text("live", timeout=20_000)
            call(manager)
            expect(rpm).to_have_text("18")

            page.goto(f"http://127.0.0.1:{port}/dashboard/other#token={TOKEN}")
            expect(page.get_by_test_id("connection")).to_contain_text("may not read other")
            browser.close()
    finally:
        server.stop()
