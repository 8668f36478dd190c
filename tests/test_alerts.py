"""Alerts: the engine's state machine with an injected clock, delivery, and the built-in sinks
against real servers on 127.0.0.1 (HTTP for webhooks and Slack, aiosmtpd for email)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from aiosmtpd.controller import Controller
from openai import OpenAI

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.adapters.openai import track_openai
from quota_hooks.alerts import (
    Alert,
    AlertDeliveryError,
    AlertKind,
    EmailSink,
    LoggingSink,
    SlackSink,
    WebhookSink,
    verify_signature,
)
from quota_hooks.alerts import sinks as sinks_module
from quota_hooks.errors import ConfigurationError, StorageError
from quota_hooks.storage import MemoryStore
from quota_hooks.testing import CaptureSink, FakeOpenAI, FakeUsage, ManualClock

pytestmark = pytest.mark.unit


def policy(**limits: Any) -> QuotaPolicy:
    return QuotaPolicy.unlimited().model_copy(update=limits)


def call(manager: QuotaManager, ws: str = "ws", **fields: Any) -> None:
    manager.record(UsageRecord(workspace_id=ws, model="gpt-4o-mini", **fields))


@pytest.fixture
def sink() -> CaptureSink:
    return CaptureSink()


def make(clock: ManualClock, sink: Any, **kwargs: Any) -> QuotaManager:
    kwargs.setdefault("policy", policy(rpm=100))
    return QuotaManager(clock=clock, sinks=[sink], **kwargs)


# ---------------------------------------------------------------------- the state machine
def test_thresholds_cross_exactly_at_80_and_95_percent(clock: ManualClock,
                                                       sink: CaptureSink) -> None:
    manager = make(clock, sink)
    for n in range(1, 101):
        call(manager)
        assert manager.drain()
        expected = ["warning"] * (n >= 80) + ["critical"] * (n >= 95)
        assert sink.kinds == expected, n
    warning, critical = sink.alerts
    assert (warning.metric, warning.current, warning.limit, warning.percentage) == (
        "rpm", 80, 100, 80.0)
    assert critical.percentage == 95.0 and critical.scope == "workspace:ws"
    assert warning.message == (
        "Workspace 'ws' reached 80% of its requests-per-minute limit: 80 of 100 requests (80.0%).")
    assert warning.at == clock.datetime()
    manager.close()


def test_budget_warning_critical_and_quota_exceeded(clock: ManualClock,
                                                    sink: CaptureSink) -> None:
    manager = make(clock, sink, policy=policy(monthly_budget_usd=Decimal("1.00")))
    for cost in ("0.79", "0.01", "0.14", "0.01", "0.05"):
        call(manager, cost=Decimal(cost))
    manager.drain()
    assert sink.kinds == ["warning", "critical", "quota_exceeded"]
    assert sink.alerts[2].message == (
        "Workspace 'ws' has used up its monthly budget: $1.00 of $1.00 (100.0%).")
    assert sink.alerts[0].dedupe_key == "alert:ws:monthly_budget_usd:warning:2026-01"


def test_one_big_jump_fires_each_threshold_it_crosses(clock: ManualClock,
                                                      sink: CaptureSink) -> None:
    manager = make(clock, sink, policy=policy(tpm=1000))
    call(manager, input_tokens=990)
    manager.drain()
    assert sink.kinds == ["warning", "critical"]


def test_hysteresis_rearms_below_the_margin_and_sends_recovered(
    clock: ManualClock, sink: CaptureSink
) -> None:
    manager = make(clock, sink, policy=policy(tpd=1000), hysteresis_percent=5)
    call(manager, input_tokens=800)  # 80 %: warning
    manager.drain()
    clock.advance(86_400 - 1800)
    call(manager, input_tokens=10)  # 81 %: nothing new
    clock.advance(1800)  # the 800 leave the day window: 1 %
    call(manager, input_tokens=1)
    manager.drain()
    assert sink.kinds == ["warning", "recovered"]
    assert sink.alerts[1].message.startswith("Workspace 'ws' is back to normal")


def test_flapping_just_under_a_threshold_does_not_refire(clock: ManualClock,
                                                         sink: CaptureSink) -> None:
    manager = make(clock, sink, policy=policy(tpm=100), hysteresis_percent=5)
    call(manager, input_tokens=80)  # 80 %: warning
    manager.drain()
    clock.advance(60)
    call(manager, input_tokens=77)  # 77 %: above 75, still armed as warning
    manager.drain()
    clock.advance(60)
    call(manager, input_tokens=80)  # back to 80 %: no second warning
    manager.drain()
    assert sink.kinds == ["warning"]


def test_a_new_month_rearms_the_budget(clock: ManualClock, sink: CaptureSink) -> None:
    manager = make(clock, sink, policy=policy(monthly_budget_usd=Decimal(10)))
    call(manager, cost=Decimal(8))
    manager.drain()
    clock.advance(31 * 86400)  # February
    call(manager, cost=Decimal(8))
    manager.drain()
    assert sink.kinds == ["warning", "warning"]
    assert [a.dedupe_key[-7:] for a in sink.alerts] == ["2026-01", "2026-02"]


def test_1000_crossings_give_no_duplicate_and_no_missed_alert(clock: ManualClock,
                                                              sink: CaptureSink) -> None:
    manager = make(clock, sink, policy=policy(rpm=10))
    for _ in range(1000):
        for _ in range(8):
            call(manager)  # 80 %
        manager.drain()
        clock.advance(61)  # the minute window empties
        call(manager)  # 10 %: recovered
        manager.drain()
        clock.advance(61)
    counts = Counter(sink.kinds)
    assert counts == {"warning": 1000, "recovered": 1000}
    assert len({(a.kind, a.at) for a in sink.alerts}) == 2000


def test_rate_limited_alert_once_a_minute(clock: ManualClock, sink: CaptureSink) -> None:
    manager = make(clock, sink)
    for _ in range(3):
        call(manager, success=False, status_code=429)
    manager.drain()
    clock.advance(61)
    call(manager, success=False, status_code=429)
    manager.drain()
    assert sink.kinds == ["rate_limited", "rate_limited"]
    assert "429" in sink.alerts[0].message


def test_degraded_alert_when_tracking_fails(clock: ManualClock, sink: CaptureSink) -> None:
    manager = make(clock, sink)
    manager.note_tracking_failure("test", RuntimeError("boom"), "ws")
    manager.note_tracking_failure("test", RuntimeError("boom"), "ws")
    manager.drain()
    assert sink.kinds == ["degraded"]
    assert sink.alerts[0].message.startswith("Tracking failed for workspace 'ws'")


def test_processes_sharing_a_store_send_each_alert_once(clock: ManualClock) -> None:
    store = MemoryStore()
    sinks = [CaptureSink() for _ in range(4)]
    managers = [QuotaManager(policy(rpm=10), store=store, clock=clock, sinks=[s])
                for s in sinks]
    for i in range(10):
        call(managers[i % 4])
        for m in managers:  # every one of them evaluates the shared counters
            m.alerts.notify("ws")  # type: ignore[union-attr]
            m.drain()
    kinds = [kind for s in sinks for kind in s.kinds]
    assert sorted(kinds) == ["critical", "warning"]


# ---------------------------------------------------------------------- delivery
def test_a_raising_sink_does_not_stop_the_others(clock: ManualClock, sink: CaptureSink) -> None:
    def explode(alert: Alert) -> None:
        raise RuntimeError("sink down")

    manager = QuotaManager(policy(rpm=10), clock=clock, sinks=[explode, sink])
    for _ in range(8):
        call(manager)
    assert manager.drain()
    assert sink.kinds == ["warning"]
    assert manager.alerts is not None and manager.alerts.failed == 1


def test_a_hanging_sink_times_out_and_never_blocks_calls(clock: ManualClock,
                                                         sink: CaptureSink) -> None:
    release = threading.Event()

    async def hang(alert: Alert) -> None:
        await asyncio.sleep(3600)

    def blocked(alert: Alert) -> None:  # a sync sink, stuck until released
        release.wait(10)

    manager = QuotaManager(policy(rpm=10), clock=clock, sinks=[hang, blocked, sink],
                           sink_timeout=0.2)
    for _ in range(8):
        call(manager)
    for _ in range(1000):  # the calls go on while two sinks are stuck
        call(manager, ws="other")
    assert manager.drain(timeout=10)
    release.set()
    assert [a.kind.value for a in sink.alerts if a.workspace_id == "ws"] == ["warning"]
    # every alert timed out on both stuck sinks, and reached the good one
    assert manager.alerts is not None and manager.alerts.failed == 2 * len(sink.alerts)


def test_a_full_queue_drops_the_oldest_and_counts(clock: ManualClock) -> None:
    gate = threading.Event()
    got: list[str] = []

    def slow(alert: Alert) -> None:
        gate.wait(10)
        got.append(alert.workspace_id)

    manager = QuotaManager(policy(rpm=1), clock=clock, sinks=[slow], alert_queue_size=2)
    engine = manager.alerts
    assert engine is not None
    for n in range(6):
        call(manager, ws=f"ws{n}")  # each crosses warning and critical at once: 2 alerts
    for _ in range(1000):
        if engine.dropped >= 9:
            break
        threading.Event().wait(0.01)
    gate.set()
    assert manager.drain()
    # 12 alerts: at most one in flight, two fit in the queue, the rest were dropped
    assert engine.dropped >= 9 and engine.dropped + len(got) == 12
    assert got[-2:] == ["ws5", "ws5"]  # the newest were kept


def test_callables_sync_and_async_and_add_sink(clock: ManualClock) -> None:
    seen: list[str] = []

    async def on_alert(alert: Alert) -> None:
        seen.append("async:" + alert.kind.value)

    manager = QuotaManager(policy(rpm=10), clock=clock)
    manager.add_sink(lambda alert: seen.append("sync:" + alert.kind.value))
    manager.add_sink(on_alert)
    for _ in range(8):
        call(manager)
    assert manager.drain()
    assert sorted(seen) == ["async:warning", "sync:warning"]
    with pytest.raises(ConfigurationError, match="alert sink"):
        manager.add_sink(42)  # type: ignore[arg-type]


def test_logging_sink_levels(clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    manager = QuotaManager(policy(rpm=10), clock=clock, sinks=[LoggingSink()])
    with caplog.at_level(logging.INFO, logger="quota_hooks.alerts"):
        for _ in range(10):
            call(manager)
        manager.drain()
    levels = [(r.levelname, r.getMessage()[:30]) for r in caplog.records
              if r.name == "quota_hooks.alerts"]
    assert levels == [("WARNING", "Workspace 'ws' reached 80% of "),
                      ("ERROR", "Workspace 'ws' reached 95% of ")]


# ---------------------------------------------------------------------- webhooks on 127.0.0.1
class Hook:
    """A loopback HTTP server that answers POSTs as told: "ok", "500", "reset", "hang",
    or "redirect:<url>"; it keeps every body and header it got."""

    def __init__(self, *plan: str) -> None:
        self.plan = list(plan)
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.bodies.append(body)
                hook.headers.append(dict(self.headers))
                step = hook.plan.pop(0) if hook.plan else "ok"
                if step == "reset":
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    return
                if step == "hang":
                    hook.release.wait(10)
                if step.startswith("redirect:"):
                    self.send_response(307)
                    self.send_header("location", step.split(":", 1)[1])
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                code = 500 if step == "500" else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


def alert(kind: AlertKind = AlertKind.WARNING) -> Alert:
    return Alert(kind=kind, workspace_id="acme", scope="workspace:acme", metric="rpm",
                 current=80, limit=100, percentage=80.0, message="Workspace 'acme' reached 80%",
                 at=ManualClock().datetime(), dedupe_key="alert:acme:rpm:warning")


async def test_webhook_posts_signed_json(hook: Hook) -> None:
    sink = WebhookSink(hook.url, secret="s3cret", retries=0)
    await sink.send(alert())
    [body] = hook.bodies
    payload = json.loads(body)
    assert payload["kind"] == "warning" and payload["workspace_id"] == "acme"
    assert payload["percentage"] == 80.0 and payload["at"] == "2026-01-01T00:00:00Z"
    headers = {k.lower(): v for k, v in hook.headers[0].items()}
    assert verify_signature("s3cret", body, headers["x-quota-hooks-timestamp"],
                            headers["x-quota-hooks-signature"])
    assert not verify_signature("wrong", body, headers["x-quota-hooks-timestamp"],
                                headers["x-quota-hooks-signature"])


@pytest.mark.parametrize("failure", ["500", "reset", "hang"])
async def test_webhook_retries_and_counts(failure: str) -> None:
    server = Hook(failure, "ok")
    try:
        sink = WebhookSink(server.url, retries=2, backoff=0.01, timeout=0.5)
        await sink.send(alert())
        assert (sink.attempts, sink.retries_made, sink.failures) == (2, 1, 0)
        assert len(server.bodies) == 2
    finally:
        server.close()


async def test_webhook_gives_up_after_its_retries() -> None:
    server = Hook("500", "500", "500")
    try:
        sink = WebhookSink(server.url, retries=2, backoff=0.01)
        with pytest.raises(AlertDeliveryError, match="HTTP 500"):
            await sink.send(alert())
        assert (sink.attempts, sink.retries_made, sink.failures) == (3, 2, 1)
    finally:
        server.close()


@pytest.mark.slow
def test_a_failing_webhook_never_slows_the_calls(clock: ManualClock) -> None:
    server = Hook("hang", "500", "reset")
    try:
        sink = WebhookSink(server.url, retries=2, backoff=0.01, timeout=3)
        manager = QuotaManager(policy(rpm=10), clock=clock, sinks=[sink],
                               policies={"busy": QuotaPolicy.unlimited()})
        for _ in range(8):
            call(manager)
        while not server.bodies:  # the webhook is now hanging
            threading.Event().wait(0.005)
        for _ in range(2000):  # and the calls are recorded meanwhile
            call(manager, ws="busy")
        assert manager.status("busy").requests_per_minute.current == 2000
        assert sink.attempts == 1  # still stuck on its first attempt (for up to 3 s)
        assert manager.drain(timeout=30)  # it times out, gets a 500, then a reset
        assert (sink.attempts, sink.retries_made, sink.failures) == (3, 2, 1)
    finally:
        server.close()


async def test_the_private_address_guard(hook: Hook) -> None:
    guarded = WebhookSink(hook.url, block_private_addresses=True, retries=0)
    with pytest.raises(AlertDeliveryError, match="private address"):
        await guarded.send(alert())
    assert hook.bodies == []  # nothing was sent
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1",
                    "fe80::1", "::ffff:10.0.0.1", "0.0.0.0"):
        assert sinks_module._forbidden_address(address), address
    assert not sinks_module._forbidden_address("93.184.216.34")


async def test_the_guard_refuses_a_redirect_to_a_private_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pretend 127.0.0.1 is public, so that only the redirect target is private.
    monkeypatch.setattr(sinks_module, "_forbidden_address", lambda a: a == "127.0.0.2")
    server = Hook("redirect:http://127.0.0.2:9/internal")
    try:
        sink = WebhookSink(server.url, block_private_addresses=True, retries=0)
        with pytest.raises(AlertDeliveryError, match=r"127\.0\.0\.2"):
            await sink.send(alert())
        assert len(server.bodies) == 1
    finally:
        server.close()


async def test_slack_blocks(hook: Hook) -> None:
    await SlackSink(hook.url).send(alert(AlertKind.CRITICAL))
    payload = json.loads(hook.bodies[0])
    assert payload["text"] == "Workspace 'acme' reached 80%"
    header, section, fields, context = payload["blocks"]
    assert header == {"type": "header", "text": {
        "type": "plain_text", "text": ":rotating_light: quota-hooks: critical"}}
    assert section["text"]["text"] == payload["text"]
    assert {"type": "mrkdwn", "text": "*Metric*\nrpm"} in fields["fields"]
    assert "alert:acme:rpm:warning" in context["elements"][0]["text"]


async def test_email_through_a_local_smtp_server() -> None:
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sink = EmailSink("127.0.0.1", port, sender="quota@example.com",
                         recipients=["ops@example.com"], timeout=5)
        await sink.send(alert(AlertKind.QUOTA_EXCEEDED))
    finally:
        controller.stop()
    [envelope] = received
    assert envelope.rcpt_tos == ["ops@example.com"]
    text = envelope.content.decode()
    assert "Subject: [quota-hooks] quota_exceeded: workspace acme" in text
    assert "Workspace 'acme' reached 80%" in text and "dedupe_key: alert:acme:rpm:warning" in text


def test_no_alert_body_contains_a_key_or_a_prompt(clock: ManualClock, hook: Hook) -> None:
    fake = FakeOpenAI(FakeUsage(input_tokens=400, output_tokens=100))
    manager = QuotaManager(policy(rpm=3, tpm=1000, monthly_budget_usd=Decimal("0.0001"),
                                  mode="observe"),
                           clock=clock, sinks=[WebhookSink(hook.url, secret="whsec-1")])
    client = track_openai(
        OpenAI(api_key="sk-live-SECRET-KEY", base_url="http://fake/v1", max_retries=0,
               http_client=httpx2.Client(transport=fake.transport())),
        workspace_id="acme", manager=manager)
    fake.fail_next(429, times=1)
    for _ in range(3):
        with contextlib.suppress(openai.RateLimitError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "TOP SECRET PROMPT"}])
    assert manager.drain(timeout=10)
    kinds = {json.loads(b)["kind"] for b in hook.bodies}
    assert {"warning", "critical", "rate_limited", "quota_exceeded"} <= kinds
    for body in hook.bodies:
        assert b"SECRET" not in body and b"sk-live" not in body and b"whsec" not in body
        assert b"Hello from FakeOpenAI" not in body  # nor a completion


def test_sinks_from_the_environment() -> None:
    manager = QuotaManager.from_env({
        "QUOTA_HOOKS_WEBHOOK_URL": "https://hooks.example/q",
        "QUOTA_HOOKS_WEBHOOK_SECRET": "s",
        "QUOTA_HOOKS_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
    })
    assert manager.alerts is not None
    webhook, slack = manager.alerts.sinks
    assert isinstance(webhook, WebhookSink) and webhook.secret == "s"
    assert type(slack) is SlackSink and slack.secret is None
    with pytest.raises(ConfigurationError, match=r"QUOTA_HOOKS_WEBHOOK_URL.*'ftp://x'"):
        QuotaManager.from_env({"QUOTA_HOOKS_WEBHOOK_URL": "ftp://x"})


def test_bad_sink_configuration_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match="retries must be a whole number >= 0, got -1"):
        WebhookSink("https://hooks.example", retries=-1)
    with pytest.raises(ConfigurationError, match="recipients"):
        EmailSink("localhost", sender="a@b", recipients="ops@example.com")
    with pytest.raises(ConfigurationError, match="queue_size"):
        QuotaManager(sinks=[CaptureSink()], alert_queue_size=0)


def test_four_processes_on_sqlite_send_each_alert_once(tmp_path: Path) -> None:
    from quota_hooks.storage import SQLiteStore

    db = tmp_path / "alerts.db"
    SQLiteStore(db).close()
    code = textwrap.dedent("""
        import sys, time
        from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
        from quota_hooks.storage import SQLiteStore
        from quota_hooks.testing import CaptureSink, ManualClock
        sink = CaptureSink()
        manager = QuotaManager(QuotaPolicy.unlimited().model_copy(update={"rpm": 100}),
                               store=SQLiteStore(sys.argv[1]), clock=ManualClock(1767225600.0),
                               sinks=[sink])
        for _ in range(25):
            manager.record(UsageRecord(workspace_id="ws", model="gpt-4o-mini"))
            manager.drain()
        # wait for the other processes, then evaluate again: all four see 100 %
        while manager.status("ws", enhanced=False).requests_per_minute.current < 100:
            time.sleep(0.01)
        manager.alerts.notify("ws")
        manager.drain()
        manager.close()
        print(manager.alerts.suppressed, " ".join(sink.kinds))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    workers = [subprocess.Popen([sys.executable, "-c", code, str(db)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(4)]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    kinds = Counter(kind for out, _ in outputs for kind in out.split()[1:])
    assert kinds == {"warning": 1, "critical": 1}  # 100 calls from 4 processes: once each
    # every process saw both crossings; the store let one of them send each alert
    assert sum(int(out.split()[0]) for out, _ in outputs) == 4 * 2 - 2


class _DownStore(MemoryStore):
    """A store whose every write and claim fails, as when Redis is unreachable."""

    def commit(self, *args: Any, **kwargs: Any) -> None:
        raise StorageError("store down")

    async def aclaim(self, key: str, now: float, ttl: float) -> bool:
        raise StorageError("store down")


def test_a_store_outage_sends_one_degraded_alert_not_one_per_call(
    clock: ManualClock, sink: CaptureSink
) -> None:
    manager = QuotaManager(policy(rpm=100), store=_DownStore(), clock=clock, sinks=[sink])
    for _ in range(50):
        call(manager)
        manager.drain()
    assert manager.tracking_errors == 50
    assert sink.kinds == ["degraded"]
    clock.advance(3600)  # a later period of the same outage alerts again, once
    for _ in range(5):
        call(manager)
        manager.drain()
    assert sink.kinds == ["degraded", "degraded"]


def test_one_workspace_failing_evaluation_does_not_cost_the_others_their_alerts(
    clock: ManualClock, sink: CaptureSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make(clock, sink, policy=policy(rpm=10))
    engine = manager.alerts
    assert engine is not None
    real = engine._evaluate

    async def flaky(workspace_id: str, now: float) -> Any:
        if workspace_id == "broken":
            raise RuntimeError("a bad policy lookup")
        return await real(workspace_id, now)

    monkeypatch.setattr(engine, "_evaluate", flaky)
    with engine._lock:  # both dirty in one evaluation round
        for _ in range(8):
            manager.store.commit(manager.prepare(UsageRecord(workspace_id="ws")))
        engine._dirty.update({"broken": None, "ws": None})
    engine._dispatch.kick()
    assert manager.drain()
    assert sink.kinds == ["warning"]
    assert engine.evaluation_errors == 1


def test_drain_after_close_is_true_even_if_a_record_came_late(
    clock: ManualClock, sink: CaptureSink
) -> None:
    manager = make(clock, sink)
    call(manager)
    manager.close()
    call(manager)  # a late record on a closed manager (memory store): no alert thread left
    assert manager.alerts is not None and manager.alerts.drain(timeout=1)


def test_a_hung_sync_sink_holds_one_thread_not_one_per_alert(clock: ManualClock) -> None:
    release = threading.Event()
    started = []

    def stuck(alert: Alert) -> None:
        started.append(alert.kind)
        release.wait(30)

    manager = QuotaManager(policy(rpm=10, rpd=20), clock=clock, sinks=[stuck],
                           sink_timeout=0.1)
    before = threading.active_count()
    for _ in range(20):  # warning + critical for rpm, then for rpd
        call(manager)
    assert manager.drain(timeout=10)
    assert manager.alerts is not None and manager.alerts.failed >= 3
    assert len(started) == 1  # the later alerts timed out waiting, without a thread each
    assert threading.active_count() <= before + 2  # the alert loop and the one stuck thread
    release.set()


async def test_a_send_cancelled_before_its_thread_starts_does_not_block_the_sink() -> None:
    import anyio

    from quota_hooks.alerts.model import CallbackSink

    got: list[str] = []
    sink = CallbackSink(lambda alert: got.append(alert.message))
    alert = Alert(kind=AlertKind.WARNING, workspace_id="ws", scope="workspace:ws",
                  metric="rpm", current=8, limit=10, percentage=80.0, message="first",
                  at=datetime.now(UTC), dedupe_key="k")
    with anyio.move_on_after(0):  # cancelled at once, before the worker thread runs
        await sink.send(alert)
    for text in ("second", "third"):
        with anyio.fail_after(2):
            await sink.send(alert.model_copy(update={"message": text}))
    assert got[-2:] == ["second", "third"]
