"""Attacks on the private-address guard (``block_private_addresses=True``): internal and
special-purpose addresses in every spelling (CGNAT, cloud metadata, IPv4 wrapped in IPv6), and
DNS rebinding between the guard's check and the connection."""

from __future__ import annotations

import os

import httpx
import pytest
from webhook_harness import FakeDNS, Receiver, Recorder, alert

from quota_hooks.alerts import AlertDeliveryError, WebhookSink
from quota_hooks.alerts import sinks as sinks_module

# (address, why it is refused -- a part of the reason the guard gives -- or None: allowed)
ADDRESSES: list[tuple[str, str | None]] = [
    # loopback, unspecified
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    # RFC 1918, unique-local IPv6
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.0.1", "private"),
    ("fc00::1", "private"),
    ("fd00:ec2::254", "private"),  # the AWS IPv6 metadata address
    # shared address space (carrier-grade NAT), where some clouds put their metadata
    ("100.64.0.1", "shared address space"),
    ("100.100.100.200", "shared address space"),  # Alibaba Cloud metadata
    ("100.127.255.254", "shared address space"),
    # link-local: the metadata address of most clouds
    ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    # multicast, including global-scope multicast that Python 3.11 calls global
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    # reserved, deprecated, documentation and other special-purpose blocks
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("::a00:1", "reserved"),  # IPv4-compatible (deprecated)
    ("64:ff9b:1::a00:1", "reserved"),  # local-use NAT64 (RFC 8215)
    ("fec0::1", "site-local"),
    ("0.1.2.3", "private"),  # "this network"
    ("192.0.2.1", "private"),  # TEST-NET-1
    ("198.18.0.1", "private"),  # benchmarking
    ("2001:db8::1", "private"),  # documentation
    ("2001::1", "private"),  # Teredo
    ("3fff::1", "not globally reachable"),  # documentation (RFC 9637)
    # IPv4 wrapped in IPv6: judged by the IPv4 address inside
    ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1: private"),
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped 169.254.169.254: link-local"),
    ("::ffff:100.100.100.200", "IPv4-mapped 100.100.100.200: shared address space"),
    ("2002:a00:1::1", "6to4 10.0.0.1: private"),
    ("2002:7f00:1::", "6to4 127.0.0.1: loopback"),
    ("2002:a9fe:a9fe::1", "6to4 169.254.169.254: link-local"),
    ("64:ff9b::a00:1", "NAT64 10.0.0.1: private"),
    ("64:ff9b::7f00:1", "NAT64 127.0.0.1: loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254: link-local"),
    ("64:ff9b::6464:64c8", "NAT64 100.100.100.200: shared address space"),
    ("not-an-ip", "not an IP address"),
    # public
    ("93.184.216.34", None),
    ("1.1.1.1", None),
    ("8.8.8.8", None),
    ("100.63.255.255", None),  # just below 100.64.0.0/10
    ("100.128.0.0", None),  # just above it
    ("172.32.0.1", None),  # just above 172.16.0.0/12
    ("2606:4700:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("::ffff:93.184.216.34", None),
    ("2002:5db8:d822::1", None),  # 6to4 of a public address
    ("64:ff9b::5db8:d822", None),  # NAT64 of a public address
]


@pytest.mark.parametrize(("address", "reason"), ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_the_guard_refuses_every_address_that_is_not_public(address: str,
                                                           reason: str | None) -> None:
    assert sinks_module._forbidden_address(address) is (reason is not None)


@pytest.mark.parametrize(("address", "reason"), ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_the_guard_says_why_it_refuses(address: str, reason: str | None) -> None:
    got = sinks_module._refusal_reason(address)
    assert got is None if reason is None else got is not None and reason in got, got


# ---------------------------------------------------------------------- through a sink
@pytest.mark.parametrize("address", [
    "100.100.100.200", "169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "100.64.0.1",
])
async def test_a_name_resolving_to_a_metadata_or_cgnat_address_gets_nothing(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    FakeDNS(monkeypatch, {"hooks.example": [[address]]})
    recorder = Recorder()
    sink = WebhookSink("https://hooks.example/hook", block_private_addresses=True,
                       retries=0, transport=recorder.transport())
    with pytest.raises(AlertDeliveryError, match="private address"):
        await sink.send(alert())
    assert recorder.seen == []


async def test_an_answer_mixing_public_and_private_addresses_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeDNS(monkeypatch, {"hooks.example": [["93.184.216.34", "10.0.0.1"]]})
    recorder = Recorder()
    sink = WebhookSink("https://hooks.example/hook", block_private_addresses=True,
                       retries=0, transport=recorder.transport())
    with pytest.raises(AlertDeliveryError, match=r"10\.0\.0\.1"):
        await sink.send(alert())
    assert recorder.seen == []


@pytest.mark.parametrize(("url", "connect_url", "host_header", "sni"), [
    ("http://rebind.example:8080/hook?x=1", "http://93.184.216.34:8080/hook?x=1",
     "rebind.example:8080", None),
    ("https://rebind.example/hook", "https://93.184.216.34/hook", "rebind.example",
     "rebind.example"),
])
async def test_dns_rebinding_after_the_check_still_connects_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, url: str, connect_url: str, host_header: str,
    sni: str | None,
) -> None:
    # Public when the guard asks, 127.0.0.1 for whoever asks next (the connection, unpinned).
    dns = FakeDNS(monkeypatch, {"rebind.example": [["93.184.216.34"], ["127.0.0.1"]]})
    recorder = Recorder()
    sink = WebhookSink(url, block_private_addresses=True, retries=0,
                       transport=recorder.transport())
    await sink.send(alert())
    [seen] = recorder.seen
    assert str(seen.url) == connect_url  # the IP literal that was checked
    assert seen.headers["host"] == host_header  # the name, for virtual hosting
    assert seen.sni_hostname == sni  # and for TLS: SNI and certificate checks
    assert dns.lookups == ["rebind.example"]  # resolved once


async def test_a_pinned_ipv6_address_is_bracketed_and_keeps_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeDNS(monkeypatch, {"v6.example": [["2606:4700:4700::1111"]]})
    recorder = Recorder()
    sink = WebhookSink("https://user:pw@v6.example:8443/hook", block_private_addresses=True,
                       retries=0, transport=recorder.transport())
    await sink.send(alert())
    [seen] = recorder.seen
    assert str(seen.url) == "https://[2606:4700:4700::1111]:8443/hook"
    assert seen.headers["host"] == "v6.example:8443"
    assert seen.sni_hostname == "v6.example"
    assert seen.headers["authorization"] == "Basic dXNlcjpwdw=="  # the URL's user:pw


async def test_a_failed_connect_moves_on_to_the_next_checked_address_not_a_new_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both answers of the one lookup are checked; a later lookup (rebound) is never made.
    dns = FakeDNS(monkeypatch, {"dual.example": [["2606:4700:4700::1111", "93.184.216.34"],
                                                 ["127.0.0.1"]]})

    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.host == "2606:4700:4700::1111":
            raise httpx.ConnectError("network unreachable", request=request)
        return httpx.Response(200)

    recorder = Recorder(respond)
    sink = WebhookSink("https://dual.example/hook", block_private_addresses=True, retries=0,
                       transport=recorder.transport())
    await sink.send(alert())
    assert [seen.url.host for seen in recorder.seen] == ["2606:4700:4700::1111",
                                                         "93.184.216.34"]
    assert {seen.headers["host"] for seen in recorder.seen} == {"dual.example"}
    assert dns.lookups == ["dual.example"]


def loopback_pair() -> tuple[Receiver, Receiver]:
    """Receivers on 127.0.0.2 and 127.0.0.1 with the same port (skips where 127.0.0.2 is not
    a loopback address, as on macOS)."""
    for _ in range(20):
        try:
            public = Receiver(host="127.0.0.2")
        except OSError:
            if os.environ.get("CI"):  # Linux CI always has it: never a silent skip there
                raise
            pytest.skip("127.0.0.2 is not a loopback address here")
        try:
            return public, Receiver(host="127.0.0.1", port=public.port)
        except OSError:  # that port is taken on 127.0.0.1: another one
            public.close()
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


async def test_dns_rebinding_on_real_sockets_never_reaches_127_0_0_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On loopback only: 127.0.0.2 plays the public address (the guard is told so) and
    # 127.0.0.1 the internal service; both listen on the same port.
    monkeypatch.setattr(sinks_module, "_forbidden_address", lambda a: a == "127.0.0.1")
    public, internal = loopback_pair()
    try:
        FakeDNS(monkeypatch, {"rebind.test": [["127.0.0.2"], ["127.0.0.1"]]})
        sink = WebhookSink(f"http://rebind.test:{public.port}/hook",
                           block_private_addresses=True, retries=0)
        await sink.send(alert())
        assert internal.received == []
        [got] = public.received
        assert got.headers["host"] == f"rebind.test:{public.port}"
    finally:
        public.close()
        internal.close()


async def test_an_ip_literal_url_is_checked_like_a_name() -> None:
    internal = Receiver()
    try:
        for host in ("127.0.0.1", "[::ffff:127.0.0.1]"):
            sink = WebhookSink(f"http://{host}:{internal.port}/hook",
                               block_private_addresses=True, retries=0)
            with pytest.raises(AlertDeliveryError, match="loopback"):
                await sink.send(alert())
        assert internal.received == []
    finally:
        internal.close()


async def test_a_name_that_does_not_resolve_is_a_failed_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeDNS(monkeypatch, {})
    sink = WebhookSink("https://nowhere.invalid/hook", block_private_addresses=True,
                       retries=0, transport=Recorder().transport())
    with pytest.raises(AlertDeliveryError, match=r"cannot resolve 'nowhere\.invalid'"):
        await sink.send(alert())
    assert sink.failures == 1


async def test_the_guard_stays_opt_in_so_loopback_receivers_keep_working() -> None:
    receiver = Receiver()
    try:
        await WebhookSink(f"{receiver.origin}/hook", retries=0).send(alert())
        assert len(receiver.received) == 1
    finally:
        receiver.close()
