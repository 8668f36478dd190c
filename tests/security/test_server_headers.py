"""Browser headers of the dashboard and the API: a Content-Security-Policy without inline
script, ``nosniff``, ``no-referrer`` and a configurable ``frame-ancestors``.

Attacks: script injected into the dashboard (an inline ``<script>``, an ``on*=`` handler,
``eval``, a markup sink), the page framed by another site (clickjacking), a JSON response
sniffed into HTML, the page's URL leaking through ``Referer``, and a CSP header injected through
the ``frame_ancestors`` configuration.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.errors import ConfigurationError, StorageError
from quota_hooks.server import create_app, quota_router

TOKENS = "*:admin-token-1,a:token-a-123"
ADMIN, TOKEN_A = "admin-token-1", "token-a-123"
PAGES = ["/", "/dashboard/a", "/dashboard/team%2Fa", "/dashboard/%C3%A9quipe"]


@pytest.fixture
def manager() -> Iterator[QuotaManager]:
    manager = QuotaManager(QuotaPolicy(rpm=10))
    manager.record(UsageRecord(workspace_id="a", model="gpt-4o-mini", input_tokens=10,
                               output_tokens=2))
    yield manager
    manager.close()


@pytest.fixture
def client(manager: QuotaManager) -> Iterator[TestClient]:
    with TestClient(create_app(manager, tokens=TOKENS)) as client:
        yield client


def csp(headers: Any) -> dict[str, list[str]]:
    """The directives of a Content-Security-Policy header, by name."""
    value = headers.get("content-security-policy")
    assert value, f"no Content-Security-Policy in {dict(headers)}"
    assert "\r" not in value and "\n" not in value
    directives: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in value.split(";"))):
        name, *sources = part.split()
        assert name not in directives, f"{name} twice in {value!r}"
        directives[name] = sources
    return directives


def assert_browser_headers(headers: Any, frame_ancestors: list[str] | None = None) -> None:
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") == "no-referrer"
    policy = csp(headers)
    assert policy["frame-ancestors"] == (frame_ancestors or ["'none'"])
    assert policy["default-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'none'"]


def page_scripts(html: str) -> list[str]:
    return re.findall(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", html)


@pytest.mark.parametrize("path", PAGES)
def test_injected_inline_script_cannot_run_in_the_dashboard(client: TestClient,
                                                             path: str) -> None:
    """The page's policy allows scripts from the server only: no inline script, no eval, no
    inline handlers, no plugin content, no <base> hijack, no form posts elsewhere."""
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert_browser_headers(page.headers)
    policy = csp(page.headers)
    assert policy["script-src"] == ["'self'"]  # neither 'unsafe-inline' nor 'unsafe-eval'
    assert "'unsafe-inline'" not in policy.get("style-src", [])
    assert set(policy["connect-src"]) <= {"'self'", "ws:", "wss:"}
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy.get("require-trusted-types-for") == ["'script'"]  # no markup sinks at all
    # The page itself has no inline script, no inline handler, no inline style.
    assert re.search(r"<script\b(?![^>]*\bsrc=)", page.text) is None
    assert re.search(r"\son[a-z]+\s*=", page.text, re.IGNORECASE) is None
    assert "javascript:" not in page.text.lower()
    assert "<style" not in page.text.lower() and " style=" not in page.text.lower()
    assert page_scripts(page.text), "the dashboard loads its script from the server"


def test_the_dashboard_script_has_no_eval_or_markup_sinks(client: TestClient) -> None:
    """What the page loads is served as JavaScript with nosniff, and uses neither eval-like
    calls nor HTML sinks (which the page's Trusted Types policy would refuse anyway)."""
    page = client.get("/dashboard/a").text
    assert page_scripts(page), "the dashboard's script is a file of its own"
    assets = page_scripts(page) + re.findall(r"<link\b[^>]*\bhref=\"([^\"]+)\"", page)
    for src in assets:
        if src.startswith("data:"):  # the empty favicon
            continue
        assert ":" not in src and not src.startswith("//"), src  # same origin
        asset = client.get(urljoin("/dashboard/a", src))
        assert asset.status_code == 200, src
        assert asset.headers["x-content-type-options"] == "nosniff"
        kind = asset.headers["content-type"]
        assert kind.startswith(("text/javascript", "text/css")), kind
        if kind.startswith("text/javascript"):
            for sink in ("eval(", "new Function", "innerHTML", "outerHTML", "insertAdjacentHTML",
                         "document.write", "setTimeout(\"", "setTimeout('", ".onclick"):
                assert sink not in asset.text, f"{src} uses {sink}"


def test_api_responses_cannot_be_sniffed_framed_or_leak_a_referer(
    client: TestClient, manager: QuotaManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer of the API carries the headers: success, 401, 403, 422 and 404."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for path, headers, code in [
        ("/api/quota/status/a", auth, 200),
        ("/api/quota/status/a?enhanced=true", auth, 200),
        ("/api/quota/workspaces", auth, 200),
        ("/api/quota/history/a?by=model", auth, 200),
        ("/healthz", {}, 200),
        ("/api/quota/status/a", {}, 401),
        ("/api/quota/status/b", {"Authorization": f"Bearer {TOKEN_A}"}, 403),
        ("/api/quota/history/a?since=yesterday", auth, 422),  # the route's own 422
        ("/api/quota/history/a?by=color", auth, 422),  # FastAPI's validation error
        ("/no/such/route", {}, 404),
    ]:
        response = client.get(path, headers=headers)
        assert response.status_code == code, (path, response.text)
        assert_browser_headers(response.headers)
        if response.headers["content-type"].startswith("application/json"):
            assert csp(response.headers).get("script-src") is None  # nothing runs from JSON

    def down(*args: Any) -> Any:
        raise StorageError("redis://10.0.0.5:6379 refused")

    monkeypatch.setattr(manager.store, "counters", down)  # both faces
    broken = client.get("/api/quota/status/a", headers=auth)
    assert broken.status_code == 503
    assert_browser_headers(broken.headers)


def test_a_router_mounted_by_another_app_sends_the_headers_too(manager: QuotaManager) -> None:
    """Apps that mount ``quota_router`` themselves get the headers on its routes, its
    errors included."""
    app = FastAPI()
    app.include_router(quota_router(manager, tokens=TOKENS, frame_ancestors="'self'",
                                    dashboard=True))
    with TestClient(app) as mounted:
        for path, headers, code in [
            ("/dashboard/a", {}, 200),
            ("/api/quota/status/a", {"Authorization": f"Bearer {ADMIN}"}, 200),
            ("/api/quota/status/a", {}, 401),
            ("/api/quota/status/b", {"Authorization": f"Bearer {TOKEN_A}"}, 403),
        ]:
            response = mounted.get(path, headers=headers)
            assert response.status_code == code
            assert_browser_headers(response.headers, ["'self'"])
        for src in page_scripts(mounted.get("/").text):
            assert mounted.get(urljoin("/", src)).status_code == 200


def test_framing_by_another_site_is_refused_unless_configured(
    manager: QuotaManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default: no site may frame the page. ``frame_ancestors`` (or
    ``QUOTA_HOOKS_FRAME_ANCESTORS``) names the ones that may, for pages embedded later."""
    with TestClient(create_app(manager, tokens=TOKENS)) as default:
        page = default.get("/dashboard/a")
        assert csp(page.headers)["frame-ancestors"] == ["'none'"]
        assert page.headers.get("x-frame-options") == "DENY"
    allowed = "'self' https://portal.example https://*.corp.example:8443"
    with TestClient(create_app(manager, tokens=TOKENS, frame_ancestors=allowed)) as embedded:
        page = embedded.get("/dashboard/a")
        assert csp(page.headers)["frame-ancestors"] == allowed.split()
        assert "x-frame-options" not in page.headers  # it cannot say "these sites"
    monkeypatch.setenv("QUOTA_HOOKS_FRAME_ANCESTORS", "self https://portal.example")
    with TestClient(create_app(manager, tokens=TOKENS)) as from_env:
        page = from_env.get("/")
        assert csp(page.headers)["frame-ancestors"] == ["'self'", "https://portal.example"]
        status = from_env.get("/api/quota/status/a", headers={"Authorization": f"Bearer {ADMIN}"})
        assert csp(status.headers)["frame-ancestors"] == ["'self'", "https://portal.example"]
    with TestClient(create_app(manager, tokens=TOKENS, frame_ancestors=["'self'"])) as listed:
        page = listed.get("/")
        assert csp(page.headers)["frame-ancestors"] == ["'self'"]
        assert page.headers.get("x-frame-options") == "SAMEORIGIN"


@pytest.mark.parametrize("value", [
    "'self'; script-src *",  # a second directive smuggled in
    "https://a.example, https://b.example",
    "https://a.example\r\nSet-Cookie: x=1",
    "'none' https://a.example",  # 'none' with others means nothing
    "'unsafe-inline'",
    "*",
    "data:",
    "",
    "https://a.example/<script>",
])
def test_a_policy_cannot_be_injected_through_frame_ancestors(manager: QuotaManager,
                                                             value: str) -> None:
    with pytest.raises(ConfigurationError, match="frame_ancestors"):
        create_app(manager, tokens=TOKENS, frame_ancestors=value)


def test_a_bad_frame_ancestors_variable_is_named(manager: QuotaManager,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUOTA_HOOKS_FRAME_ANCESTORS", "'self'; script-src *")
    with pytest.raises(ConfigurationError, match="QUOTA_HOOKS_FRAME_ANCESTORS"):
        create_app(manager, tokens=TOKENS)
