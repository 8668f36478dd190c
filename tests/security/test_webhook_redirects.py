"""Attacks through webhook redirects: a receiver (or whoever controls it) answering 3xx to
make the sink re-send its Authorization, its HMAC signature and its custom headers somewhere
else, or to reach an address the private-address guard refuses."""

from __future__ import annotations

import httpx
import pytest
from webhook_harness import FakeDNS, Recorder, alert, receivers, redirect_to

from quota_hooks.alerts import AlertDeliveryError, WebhookSink

SECRET = "redirect-test-secret"
HEADERS = {"Authorization": "Bearer redirect-test-token", "X-Custom": "custom-value"}


async def test_a_cross_origin_redirect_does_not_get_the_credentials_signature_or_headers() -> None:
    with receivers([], []) as (hook, attacker):
        hook.plan = [f"redirect:{attacker.origin}/steal?token=LOCATION-QUERY"]
        sink = WebhookSink(f"{hook.origin}/hook?key=URL-QUERY", secret=SECRET, headers=HEADERS,
                           retries=2, backoff=0)
        with pytest.raises(AlertDeliveryError) as caught:
            await sink.send(alert())
        assert attacker.received == []  # nothing at all went to the other origin
        assert len(hook.received) == 1
        assert hook.received[0].headers["authorization"] == HEADERS["Authorization"]
        message = str(caught.value)
        assert f"from {hook.origin} to {attacker.origin} " in message
        for private in ("/hook", "URL-QUERY", "/steal", "LOCATION-QUERY"):
            assert private not in message
        # a refused redirect is a failed delivery, not retried
        assert (sink.attempts, sink.retries_made, sink.failures) == (1, 0, 1)


@pytest.mark.parametrize(
    ("location", "other_origin"),
    [
        ("http://hooks.example/hook", "http://hooks.example"),  # https -> http downgrade
        ("https://evil.example/hook", "https://evil.example"),  # another host
        ("https://hooks.example:8443/hook", "https://hooks.example:8443"),  # another port
        ("//evil.example/hook", "https://evil.example"),  # scheme-relative
        ("https://hooks.example.evil.example/", "https://hooks.example.evil.example"),
    ],
)
async def test_a_redirect_to_another_scheme_host_or_port_is_refused(
    location: str, other_origin: str
) -> None:
    recorder = Recorder(redirect_to(location))
    sink = WebhookSink("https://hooks.example/hook", secret=SECRET, headers=HEADERS,
                       retries=0, transport=recorder.transport())
    with pytest.raises(AlertDeliveryError, match="cross-origin") as caught:
        await sink.send(alert())
    assert [seen.url.host for seen in recorder.seen] == ["hooks.example"]
    assert f"from https://hooks.example to {other_origin} " in str(caught.value)


async def test_a_same_origin_redirect_is_followed_with_its_signature() -> None:
    with receivers(["redirect:/moved?x=1"]) as (hook,):
        sink = WebhookSink(f"{hook.origin}/hook", secret=SECRET, headers=HEADERS, retries=0)
        await sink.send(alert())
        first, second = hook.received
        assert (first.path, second.path) == ("/hook", "/moved?x=1")
        assert second.body == first.body
        for name in ("authorization", "x-custom", "x-quota-hooks-signature"):
            assert second.headers[name] == first.headers[name]


async def test_a_redirect_loop_on_the_same_origin_is_cut_after_max_redirects() -> None:
    with receivers(["redirect:/hook"]) as (hook,):
        hook.repeat = True
        sink = WebhookSink(f"{hook.origin}/hook", max_redirects=2, retries=0)
        with pytest.raises(AlertDeliveryError, match="more than 2 redirects"):
            await sink.send(alert())
        assert len(hook.received) == 3


async def test_dns_rebinding_on_a_same_origin_redirect_hop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first hop resolves to a public address and answers 307 to its own origin; by the
    # second hop the name points at 127.0.0.1. Every hop is resolved, checked and pinned.
    dns = FakeDNS(monkeypatch, {"hooks.example": [["93.184.216.34"], ["127.0.0.1"]]})
    recorder = Recorder(redirect_to("/next"))
    sink = WebhookSink("https://hooks.example/hook", block_private_addresses=True, retries=0,
                       transport=recorder.transport())
    with pytest.raises(AlertDeliveryError, match=r"127\.0\.0\.1.*loopback"):
        await sink.send(alert())
    assert dns.lookups == ["hooks.example", "hooks.example"]
    assert [str(seen.url) for seen in recorder.seen] == ["https://93.184.216.34/hook"]


async def test_a_redirect_to_an_unparseable_location_is_a_failed_delivery() -> None:
    recorder = Recorder(redirect_to("http://[::1"))
    sink = WebhookSink("https://hooks.example/hook", retries=0, transport=recorder.transport())
    with pytest.raises(AlertDeliveryError, match="redirect"):
        await sink.send(alert())
    assert len(recorder.seen) == 1


async def test_a_303_to_the_same_origin_is_followed_and_a_200_ends_it() -> None:
    answers = iter([httpx.Response(303, headers={"location": "/done"}), httpx.Response(200)])
    recorder = Recorder(lambda request: next(answers))
    sink = WebhookSink("https://hooks.example/hook", retries=0, transport=recorder.transport())
    await sink.send(alert())
    assert [seen.url.path for seen in recorder.seen] == ["/hook", "/done"]
