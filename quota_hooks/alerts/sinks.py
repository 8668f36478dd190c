"""Built-in alert sinks: logging, webhooks (httpx), Slack, email (SMTP)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import smtplib
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import anyio
import anyio.to_thread

from ..errors import ConfigurationError
from .model import Alert, AlertKind, OneThread

if TYPE_CHECKING:
    import httpx

__all__ = [
    "AlertDeliveryError",
    "EmailSink",
    "LoggingSink",
    "SlackSink",
    "WebhookSink",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Quota-Hooks-Signature"
TIMESTAMP_HEADER = "X-Quota-Hooks-Timestamp"

DEFAULT_LEVELS: Mapping[AlertKind, int] = {
    AlertKind.WARNING: logging.WARNING,
    AlertKind.CRITICAL: logging.ERROR,
    AlertKind.QUOTA_EXCEEDED: logging.ERROR,
    AlertKind.RATE_LIMITED: logging.WARNING,
    AlertKind.DEGRADED: logging.WARNING,
    AlertKind.RECOVERED: logging.INFO,
}


class AlertDeliveryError(Exception):
    """A sink could not deliver an alert (after its retries)."""


class LoggingSink:
    """Alerts as stdlib log records, at a level per kind (``DEFAULT_LEVELS``).

    Args:
        logger: a logger or a logger name (``"quota_hooks.alerts"`` by default).
        levels: overrides of the level per :class:`AlertKind`.
    """

    def __init__(
        self,
        logger: logging.Logger | str | None = None,
        levels: Mapping[AlertKind | str, int] | None = None,
    ) -> None:
        if logger is None or isinstance(logger, str):
            logger = logging.getLogger(logger or "quota_hooks.alerts")
        self.logger = logger
        self.levels: dict[AlertKind, int] = dict(DEFAULT_LEVELS)
        for kind, level in (levels or {}).items():
            try:
                self.levels[AlertKind(kind)] = int(level)
            except ValueError as exc:
                raise ConfigurationError(
                    f"LoggingSink levels: unknown alert kind {kind!r}"
                ) from exc

    def __repr__(self) -> str:
        return f"LoggingSink({self.logger.name!r})"

    async def send(self, alert: Alert) -> None:
        """Log ``alert.message`` with the alert's fields as ``extra``."""
        self.logger.log(
            self.levels[alert.kind],
            "%s",
            alert.message,
            extra={"quota_alert": alert.model_dump(mode="json")},
        )


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The signature header value of a webhook body: ``sha256=<hex HMAC of "ts.body">``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """For webhook receivers: True if ``signature`` signs ``body`` at ``timestamp`` and the
    timestamp is within ``tolerance`` seconds of now (replays are refused).

    The arguments come in the order ``verify_signature(secret, body, timestamp, signature)``:
    the body before the two header values (``X-Quota-Hooks-Timestamp``, then
    ``X-Quota-Hooks-Signature``).

    Anything but a genuine, fresh signature is False, never an exception: a missing
    (``None``), empty, garbled or non-hex header, a non-numeric, non-finite or stale
    timestamp, a wrongly typed value, and an empty ``secret`` (an unset secret must not
    accept what anyone can sign with an empty key).
    """
    if not isinstance(secret, (str, bytes)) or not secret:
        return False
    if not isinstance(body, (bytes, bytearray, memoryview)):
        return False
    if not (isinstance(timestamp, str) and isinstance(signature, str)
            and timestamp.isascii() and signature.isascii()):
        return False  # what the signer sends is ASCII (and compare_digest wants it so)
    clock = time.time() if now is None else now
    if not all(_is_number(value) for value in (tolerance, clock)):
        return False
    try:
        sent = float(timestamp)
        expected = sign(secret, timestamp, bytes(body))
    except ValueError:  # not a number (or a str secret that does not encode)
        return False
    if not (math.isfinite(sent) and abs(clock - sent) <= tolerance):  # NaN compares False
        return False
    return hmac.compare_digest(expected, signature)


def _is_number(value: object) -> bool:
    """True for an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_DOCUMENTATION_V6 = ipaddress.IPv6Network("3fff::/20")  # RFC 9637, unknown to Python 3.11


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address that an IPv4-mapped, 6to4 or NAT64 address reaches, with its kind."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def _refusal_reason(address: str) -> str | None:
    """Why the private-address guard refuses ``address`` (an IP literal, as ``getaddrinfo``
    gives it, a ``%scope`` allowed), or None for a public address.

    Only globally reachable unicast addresses pass: ``ipaddress``'s ``is_global``, and not
    multicast or site-local either (Python 3.11 calls some of those global). An IPv4-mapped
    (``::ffff:0:0/96``), 6to4 (``2002::/16``) or NAT64 (``64:ff9b::/96``) address is judged
    by the IPv4 address inside it, which is where its packets end up.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind, inner = embedded
            reason = _refusal_reason(str(inner))
            return None if reason is None else f"{kind} {inner}: {reason}"
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    for refused, reason in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (site_local, "site-local"),
        (ip in _SHARED, "shared address space (100.64.0.0/10)"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global or ip in _DOCUMENTATION_V6, "not globally reachable"),
    ):
        if refused:
            return reason
    return None


def _forbidden_address(address: str) -> bool:
    """True for every address that is not public (see :func:`_refusal_reason`)."""
    return _refusal_reason(address) is not None


_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDACTED = "[redacted]"


def _redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (longest first) replaced by ``[redacted]``."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


def _url_secrets(url: str, parsed: httpx.URL) -> list[str]:
    """The parts of a webhook URL that may be credentials, as given, percent-decoded and as
    httpx normalizes them: its user info and password, whatever their length, and its path
    and query, from 4 characters on (a path of "/" is none)."""
    raw_path = parsed.raw_path.decode("ascii")
    credentials = [parsed.userinfo.decode("ascii"), parsed.password]
    pieces = [parsed.path, raw_path, raw_path.partition("?")[0], parsed.query.decode("ascii")]
    try:
        parts = urlsplit(url)
        credentials += [parts.netloc.rpartition("@")[0], parts.password or ""]
        pieces += [parts.path, parts.query]
    except ValueError:  # httpx parsed it; what urlsplit makes of it is only a bonus
        pass
    found = {piece for piece in credentials if piece} | {p for p in pieces if len(p) >= 4}
    return sorted(found | {unquote(piece) for piece in found})


def _describe_url(url: str) -> str:
    """``url`` for an error message: its scheme and host only, never what follows (for a
    Slack webhook the path is the credential)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "an unparseable URL"
    if not parts.scheme or not host:
        return "a URL without a scheme and a host"
    rest = "/..." if parts.path.strip("/") or parts.query or parts.fragment else ""
    return repr(f"{parts.scheme}://{host}{rest}")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """The origin of ``url``: scheme, host (IDNA-encoded) and port (the default filled in)."""
    return url.scheme, url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS.get(url.scheme)


def _show_origin(url: httpx.URL) -> str:
    """``scheme://host[:port]`` of ``url``: never its user info, path or query."""
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


class WebhookSink:
    """POSTs each alert as JSON (``Alert.model_dump(mode="json")``) with httpx.

    Args:
        url: the endpoint (http or https).
        secret: when given, each POST carries ``X-Quota-Hooks-Timestamp`` and
            ``X-Quota-Hooks-Signature: sha256=<HMAC-SHA256 of "timestamp.body">``; receivers
            check it with :func:`verify_signature`.
        timeout: seconds per attempt.
        retries: further attempts after a connection error, a timeout, a 429 or a 5xx.
        backoff: seconds before the first retry, doubled each time.
        headers: extra request headers.
        block_private_addresses: only send to public addresses. Each hop's host is resolved
            once, every address it resolves to must be public (not loopback, private,
            link-local, shared 100.64.0.0/10, multicast, reserved or unspecified, IPv4 inside
            IPv6 judged by that IPv4), and the connection goes to the checked address (the
            request keeps the name in ``Host`` and, over https, as TLS SNI and the name the
            certificate must match), so DNS rebinding between check and connect gets nowhere.
            Off by default (a receiver on 127.0.0.1 in tests, on a private network in some
            deployments).
        max_redirects: same-origin redirects followed.
        transport: the httpx async transport to send through (tests: ``httpx.MockTransport``);
            by default a new ``httpx.AsyncHTTPTransport`` per delivery, with no proxy or TLS
            settings taken from the environment.

    Redirects: a redirect to the same origin (scheme, host and port) is followed, up to
    ``max_redirects`` times, each hop checked by the guard again; a redirect to any other
    origin is refused -- not followed and a failed delivery (:class:`AlertDeliveryError`
    naming both origins), so the Authorization, the user info of ``url``, the signature
    headers and the custom headers never reach an origin other than ``url``'s.

    Secrets stay out of ``repr()`` (the scheme, host and port only: for Slack the path is the
    credential), out of error messages (whatever the network error says, the URL's user
    info, path and query, the secret and the header values are redacted) and out of logs
    (requests go to the transport directly, so httpx logs no request line).

    ``attempts``, ``retries_made`` and ``failures`` count what happened.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: Mapping[str, str] | None = None,
        block_private_addresses: bool = False,
        max_redirects: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "WebhookSink needs httpx: pip install 'quota-hooks[alerts]'"
            ) from exc
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise ConfigurationError(
                f"webhook url is not a valid URL, got {_describe_url(str(url))}"
            ) from None
        if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
            raise ConfigurationError(
                f"webhook url must be an http(s) URL, got {_describe_url(url)}"
            )
        for name, value in [("timeout", timeout), ("backoff", backoff)]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
        for name, value in [("retries", retries), ("max_redirects", max_redirects)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be a whole number >= 0, got {value!r}")
        self._httpx = httpx
        self.url = url
        self.secret = secret
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.headers = dict(headers or {})
        self.block_private_addresses = block_private_addresses
        self.max_redirects = max_redirects
        self.attempts = 0
        self.retries_made = 0
        self.failures = 0
        self._url = parsed.copy_with(userinfo=b"", fragment=None)
        self._authorization: str | None = None
        if parsed.userinfo:  # as httpx does: the URL's user info is Basic auth
            token = f"{parsed.username}:{parsed.password}".encode()
            self._authorization = "Basic " + base64.b64encode(token).decode("ascii")
        self._transport = transport
        self._secrets = _url_secrets(url, parsed) + [
            value for value in self.headers.values() if len(value) >= 4]
        if secret:
            self._secrets.append(secret if isinstance(secret, str)
                                 else secret.decode("utf-8", "replace"))

    def __repr__(self) -> str:  # never the URL's user info, path or query
        return f"{type(self).__name__}({_show_origin(self._url)})"

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The JSON body for ``alert``."""
        return alert.model_dump(mode="json")

    async def send(self, alert: Alert) -> None:
        """POST the alert, retrying with backoff; raises :class:`AlertDeliveryError`."""
        body = json.dumps(self.payload(alert), separators=(",", ":")).encode()
        headers = {"content-type": "application/json", **self.headers}
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retries_made += 1
                await anyio.sleep(self.backoff * 2 ** (attempt - 1))
            self.attempts += 1
            if self.secret is not None:
                stamp = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = stamp
                headers[SIGNATURE_HEADER] = sign(self.secret, stamp, body)
            try:
                status = await self._post(body, headers)
            except AlertDeliveryError:
                self.failures += 1
                raise
            except (self._httpx.TransportError, OSError) as exc:
                last = f"{type(exc).__name__}: {self._scrub(str(exc))}"
                continue
            if status < 300:
                return
            last = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # a 4xx will not get better by retrying
        self.failures += 1
        raise self._error(last)

    def _error(self, problem: str) -> AlertDeliveryError:
        """An :class:`AlertDeliveryError` for ``problem`` (which names no secret: origins,
        hosts and addresses only, and foreign text through :meth:`_scrub`)."""
        return AlertDeliveryError(f"{self!r}: {problem}")

    def _scrub(self, text: str) -> str:
        """``text`` from elsewhere (an exception of the network stack), with the URL's user
        info, path and query, the secret and the custom header values redacted."""
        return _redact(text, self._secrets)

    async def _post(self, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body`` to the URL, following same-origin redirects; the final status."""
        url = self._url
        transport = self._transport or self._httpx.AsyncHTTPTransport(trust_env=False)
        try:
            for _ in range(self.max_redirects + 1):
                status, location = await self._post_once(transport, url, body, headers)
                if location is None:
                    return status
                url = self._follow(url, location)
        finally:
            if self._transport is None:
                await transport.aclose()
        raise self._error(f"more than {self.max_redirects} redirects")

    def _follow(self, url: httpx.URL, location: str) -> httpx.URL:
        """Where a redirect from ``url`` to ``location`` goes, if it stays on the origin."""
        try:
            target = url.join(location)
        except self._httpx.InvalidURL:
            raise self._error(f"a redirect from {_show_origin(url)} to an invalid URL "
                              f"was not followed") from None
        if _origin(target) != _origin(url):
            raise self._error(
                f"a redirect from {_show_origin(url)} to {_show_origin(target)} was not "
                f"followed: cross-origin redirects are refused, so that no credential, "
                f"signature or header reaches another origin")
        return target.copy_with(userinfo=b"", fragment=None)

    async def _post_once(
        self, transport: httpx.AsyncBaseTransport, url: httpx.URL, body: bytes,
        headers: Mapping[str, str],
    ) -> tuple[int, str | None]:
        """One POST to ``url``: its status, and the Location of a redirect (else None).

        With the guard on, the connection goes to an address that was checked (the next one
        if connecting fails: nothing was sent then), the name staying in ``Host`` and SNI."""
        addresses = await self._pin(url)
        for address in addresses[:-1]:
            try:
                return await self._exchange(transport, url, address, body, headers)
            except self._httpx.ConnectError:
                continue
        return await self._exchange(transport, url, addresses[-1], body, headers)

    async def _exchange(
        self, transport: httpx.AsyncBaseTransport, url: httpx.URL, address: str | None,
        body: bytes, headers: Mapping[str, str],
    ) -> tuple[int, str | None]:
        """POST to ``url`` over a connection to ``address`` (None: to its host)."""
        httpx = self._httpx
        request_headers = httpx.Headers(headers)
        request_headers.setdefault("Host", url.netloc.decode("ascii"))
        request_headers.setdefault("Accept", "*/*")
        request_headers.setdefault("User-Agent", f"python-httpx/{httpx.__version__}")
        if self._authorization is not None:
            request_headers["Authorization"] = self._authorization
        extensions: dict[str, Any] = {"timeout": httpx.Timeout(self.timeout).as_dict()}
        if url.scheme == "https":  # TLS checks the name, whatever address is connected to
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
        target = url if address is None else url.copy_with(host=address)
        request = httpx.Request("POST", target, headers=request_headers, content=body,
                                extensions=extensions)
        # the transport itself, not a client: httpx's client logs the URL of every request
        response = await transport.handle_async_request(request)
        try:
            location = response.headers.get("location") if response.is_redirect else None
            return response.status_code, location
        finally:
            await response.aclose()

    async def _pin(self, url: httpx.URL) -> list[str | None]:
        """The addresses to connect to for ``url``, in order: with the guard on, every
        address its host resolves to (resolved once, here), after checking that all of them
        are public; with the guard off ``[None]``, the transport resolving the name."""
        if not self.block_private_addresses:
            return [None]
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORTS[url.scheme]
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise self._error(f"cannot resolve {host!r}: {self._scrub(str(exc))}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise self._error(f"cannot resolve {host!r}: no address")
        for address in addresses:
            if _forbidden_address(address):
                reason = _refusal_reason(address) or "refused"
                raise self._error(
                    f"refusing to send an alert to {host!r} ({address}: {reason}): only "
                    f"public addresses are allowed, not a loopback, link-local or private "
                    f"address (block_private_addresses=True)")
        return [address.split("%", 1)[0] for address in addresses]


class SlackSink(WebhookSink):
    """Posts alerts to a Slack incoming webhook, as message blocks."""

    _EMOJI: Mapping[AlertKind, str] = {
        AlertKind.WARNING: ":warning:",
        AlertKind.CRITICAL: ":rotating_light:",
        AlertKind.QUOTA_EXCEEDED: ":no_entry:",
        AlertKind.RATE_LIMITED: ":hourglass:",
        AlertKind.DEGRADED: ":construction:",
        AlertKind.RECOVERED: ":white_check_mark:",
    }

    def payload(self, alert: Alert) -> dict[str, Any]:
        """A Slack message: a header, the sentence, and the numbers as fields."""
        title = f"{self._EMOJI[alert.kind]} quota-hooks: {alert.kind.value.replace('_', ' ')}"
        fields = [{"type": "mrkdwn", "text": f"*Workspace*\n{alert.workspace_id}"}]
        if alert.metric:
            fields.append({"type": "mrkdwn", "text": f"*Metric*\n{alert.metric}"})
        if alert.percentage is not None:
            fields.append({"type": "mrkdwn", "text": f"*Usage*\n{alert.percentage:g}%"})
        return {
            "text": alert.message,
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": title}},
                {"type": "section", "text": {"type": "mrkdwn", "text": alert.message}},
                {"type": "section", "fields": fields},
                {"type": "context", "elements": [
                    {"type": "mrkdwn", "text": f"{alert.at.isoformat()} · {alert.dedupe_key}"}
                ]},
            ],
        }


class EmailSink:
    """Sends each alert as a plain-text email over SMTP (stdlib ``smtplib``, in a worker
    thread so the event loop never blocks).

    Args:
        host, port: the SMTP server.
        sender: the From address.
        recipients: the To addresses.
        username, password: SMTP login, if the server needs one.
        starttls: upgrade the connection with STARTTLS; ``use_ssl`` connects over TLS.
        timeout: seconds for the SMTP conversation.
    """

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        recipients: Sequence[str],
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        use_ssl: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if isinstance(recipients, str) or not recipients:
            raise ConfigurationError(
                f"recipients must be a non-empty list of addresses, got {recipients!r}"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"port must be 1-65535, got {port!r}")
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        self.username = username
        self._password = password
        self.starttls = starttls
        self.use_ssl = use_ssl
        self.timeout = timeout
        self._thread = OneThread()

    def __repr__(self) -> str:  # never the password
        return f"EmailSink({self.host}:{self.port} -> {len(self.recipients)} recipients)"

    def message(self, alert: Alert) -> EmailMessage:
        """The email for ``alert``."""
        msg = EmailMessage()
        msg["Subject"] = f"[quota-hooks] {alert.kind.value}: workspace {alert.workspace_id}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        lines = [alert.message, ""]
        for name in ("metric", "current", "limit", "percentage", "at", "dedupe_key"):
            value = getattr(alert, name)
            if value is not None:
                lines.append(f"{name}: {value}")
        msg.set_content("\n".join(lines) + "\n")
        return msg

    async def send(self, alert: Alert) -> None:
        """Send the email in a worker thread; raises :class:`AlertDeliveryError` (the error
        of the connection or of the SMTP server, the password redacted)."""
        message = self.message(alert)
        try:
            await self._thread.run(self._send, message)  # a hung server holds one thread
        except OSError as exc:  # smtplib.SMTPException included
            detail = _redact(str(exc), [self._password] if self._password else [])
            raise AlertDeliveryError(f"{self!r}: {type(exc).__name__}: {detail}") from None

    def _send(self, message: EmailMessage) -> None:
        smtp_class = smtplib.SMTP_SSL if self.use_ssl else smtplib.SMTP
        with smtp_class(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username is not None:
                smtp.login(self.username, self._password or "")
            smtp.send_message(message)
