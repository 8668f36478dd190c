"""Attacks on the sinks' secrets through what they print: a Slack URL's path (the credential),
a webhook URL's query, user info and path tokens, the HMAC secret, custom header values and
the SMTP password must never show in a repr, an error message or a log line -- whichever way
a delivery fails. Every secret below is a canary string that the tests look for."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from webhook_harness import FakeDNS, Receiver, alert, closed_port, receivers

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.alerts import AlertDeliveryError, EmailSink, SlackSink, WebhookSink
from quota_hooks.errors import ConfigurationError
from quota_hooks.testing import ManualClock

SLACK_PATH = "/services/T000/B000/CANARYSECRET"
SECRET = "CANARY-SECRET"
PASSWORD = "CANARY-PW"
CANARIES = ("CANARY", "canary")  # every secret below contains one of these


def webhook_url(origin: str) -> str:
    """A webhook URL with a secret in each part that can hold one."""
    scheme, rest = origin.split("://", 1)
    return f"{scheme}://hookuser:CANARY-USERINFO@{rest}/hooks/CANARY-PATH-TOKEN?key=CANARY-QUERY"


def make_webhook(origin: str, **kwargs: Any) -> WebhookSink:
    kwargs.setdefault("retries", 1)
    kwargs.setdefault("backoff", 0)
    return WebhookSink(webhook_url(origin), secret=SECRET,
                       headers={"X-Api-Key": "CANARY-HEADER"}, **kwargs)


def assert_clean(*texts: str) -> None:
    for text in texts:
        for canary in CANARIES:
            assert canary not in text, text


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of every logger (httpx, httpcore, quota_hooks...) at DEBUG."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)


@pytest.fixture
def slack_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    """hooks.slack.com is 127.0.0.1 here: the tests never leave loopback."""
    return FakeDNS(monkeypatch, {"hooks.slack.com": [["127.0.0.1"]]})


# ---------------------------------------------------------------------- repr and str
def test_the_slack_path_is_not_in_repr_or_str() -> None:
    sink = SlackSink(f"https://hooks.slack.com{SLACK_PATH}")
    assert_clean(repr(sink), str(sink))
    assert repr(sink) == "SlackSink(https://hooks.slack.com)"


def test_webhook_userinfo_path_query_secret_and_headers_are_not_in_repr_or_str() -> None:
    sink = make_webhook("https://hooks.example:8443")
    assert_clean(repr(sink), str(sink))
    assert repr(sink) == "WebhookSink(https://hooks.example:8443)"


def test_the_smtp_password_is_not_in_repr_or_str() -> None:
    sink = EmailSink("127.0.0.1", 25, sender="a@example.com", recipients=["b@example.com"],
                     username="quota", password=PASSWORD)
    assert_clean(repr(sink), str(sink))


@pytest.mark.parametrize("url", [
    f"hooks.slack.com{SLACK_PATH}",  # the scheme forgotten
    f"ftp://hooks.slack.com{SLACK_PATH}",
    f"https://hooks.slack.com:CANARY{SLACK_PATH}",  # an invalid port
    f"https:///{SLACK_PATH}",  # no host
])
def test_a_misconfigured_url_is_not_echoed_in_the_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SlackSink(url)
    assert_clean(str(caught.value))


def test_a_misconfigured_url_from_the_environment_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as caught:
        QuotaManager.from_env({"QUOTA_HOOKS_SLACK_WEBHOOK_URL": f"hooks.slack.com{SLACK_PATH}"})
    assert "QUOTA_HOOKS_SLACK_WEBHOOK_URL" in str(caught.value)
    assert_clean(str(caught.value))


# ---------------------------------------------------------------------- delivery failures
async def test_connection_refused_does_not_leak_the_webhook_secrets(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    sink = make_webhook(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(AlertDeliveryError) as caught:
        await sink.send(alert())
    assert "ConnectError" in str(caught.value)
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_http_500_does_not_leak_the_webhook_secrets(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    with receivers(["500"]) as (hook,):
        hook.repeat = True
        sink = make_webhook(hook.origin)
        with pytest.raises(AlertDeliveryError, match="HTTP 500") as caught:
            await sink.send(alert())
        assert len(hook.received) == 2
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_a_cross_origin_redirect_does_not_leak_the_webhook_secrets(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    with receivers([], []) as (hook, other):
        hook.plan = [f"redirect:{other.origin}/elsewhere"]
        sink = make_webhook(hook.origin)
        with pytest.raises(AlertDeliveryError) as caught:
            await sink.send(alert())
        assert other.received == []
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_the_guard_refusing_does_not_leak_the_webhook_secrets(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    sink = make_webhook("http://127.0.0.1:9", block_private_addresses=True)
    with pytest.raises(AlertDeliveryError, match="private address") as caught:
        await sink.send(alert())
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_a_transport_error_echoing_the_url_and_secret_is_scrubbed() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url} with {request.headers}"
                                 f" ({SECRET})", request=request)

    sink = make_webhook("https://hooks.example", transport=httpx.MockTransport(echo))
    with pytest.raises(AlertDeliveryError) as caught:
        await sink.send(alert())
    assert "ConnectError: cannot reach https://hooks.example" in str(caught.value)
    assert_clean(str(caught.value))


async def test_slack_connection_refused_does_not_leak_the_path(
    slack_dns: FakeDNS, debug_logs: pytest.LogCaptureFixture
) -> None:
    sink = SlackSink(f"https://hooks.slack.com:{closed_port()}{SLACK_PATH}", retries=0)
    with pytest.raises(AlertDeliveryError) as caught:
        await sink.send(alert())
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_slack_http_500_does_not_leak_the_path(
    slack_dns: FakeDNS, debug_logs: pytest.LogCaptureFixture
) -> None:
    with receivers(["500"]) as (hook,):
        sink = SlackSink(f"http://hooks.slack.com:{hook.port}{SLACK_PATH}", retries=0)
        with pytest.raises(AlertDeliveryError, match="HTTP 500") as caught:
            await sink.send(alert())
        assert hook.received[0].path == SLACK_PATH  # the path was sent, to Slack only
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_slack_cross_origin_redirect_does_not_leak_the_path(
    slack_dns: FakeDNS, debug_logs: pytest.LogCaptureFixture
) -> None:
    with receivers([], []) as (hook, other):
        hook.plan = [f"redirect:{other.origin}/elsewhere"]
        sink = SlackSink(f"http://hooks.slack.com:{hook.port}{SLACK_PATH}", retries=0)
        with pytest.raises(AlertDeliveryError) as caught:
            await sink.send(alert())
        assert other.received == []
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_a_successful_slack_post_logs_no_path(
    slack_dns: FakeDNS, debug_logs: pytest.LogCaptureFixture
) -> None:
    with receivers(["ok"]) as (hook,):
        await SlackSink(f"http://hooks.slack.com:{hook.port}{SLACK_PATH}").send(alert())
        assert len(hook.received) == 1
    assert_clean(log_text(debug_logs))


def test_the_alert_engine_logging_a_failing_slack_sink_does_not_leak_the_path(
    slack_dns: FakeDNS, debug_logs: pytest.LogCaptureFixture
) -> None:
    with receivers(["500"]) as (hook,):
        sink = SlackSink(f"http://hooks.slack.com:{hook.port}{SLACK_PATH}", retries=0)
        manager = QuotaManager(QuotaPolicy.unlimited().model_copy(update={"rpm": 10}),
                               clock=ManualClock(1_767_225_600.0), sinks=[sink])
        for _ in range(8):
            manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini"))
        assert manager.drain(timeout=10)
        manager.close()
        assert manager.alerts is not None and manager.alerts.failed == 1
    assert "alert sink SlackSink(http://hooks.slack.com:" in log_text(debug_logs)
    assert_clean(log_text(debug_logs))


# ---------------------------------------------------------------------- email
async def test_smtp_connection_refused_does_not_leak_the_password(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    sink = EmailSink("127.0.0.1", closed_port(), sender="a@example.com",
                     recipients=["b@example.com"], username="quota", password=PASSWORD,
                     timeout=5)
    with pytest.raises(AlertDeliveryError) as caught:
        await sink.send(alert())
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_a_refused_smtp_login_does_not_leak_the_password(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    tried: list[Any] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        tried.append(auth_data)
        return AuthResult(success=False, handled=False)

    port = closed_port()
    controller = Controller(object(), hostname="127.0.0.1", port=port,
                            authenticator=authenticator, auth_require_tls=False)
    controller.start()
    try:
        sink = EmailSink("127.0.0.1", port, sender="a@example.com",
                         recipients=["b@example.com"], username="quota", password=PASSWORD,
                         timeout=5)
        with pytest.raises(AlertDeliveryError, match="SMTPAuthenticationError") as caught:
            await sink.send(alert())
    finally:
        controller.stop()
    assert tried and tried[0].password == PASSWORD.encode()  # the login really happened
    assert_clean(str(caught.value), repr(caught.value), log_text(debug_logs))


async def test_a_webhook_that_works_still_works(debug_logs: pytest.LogCaptureFixture) -> None:
    receiver = Receiver()
    try:
        await make_webhook(receiver.origin).send(alert())
        [got] = receiver.received
        assert got.path == "/hooks/CANARY-PATH-TOKEN?key=CANARY-QUERY"
        assert got.headers["x-api-key"] == "CANARY-HEADER"
        assert got.headers["authorization"] == "Basic aG9va3VzZXI6Q0FOQVJZLVVTRVJJTkZP"
        assert "x-quota-hooks-signature" in got.headers
    finally:
        receiver.close()
    assert_clean(log_text(debug_logs))

