"""Built-in alert sinks: logging, webhooks (httpx), Slack, email (SMTP)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import anyio.to_thread

from ..errors import ConfigurationError
from .model import Alert, AlertKind, OneThread

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
    timestamp is within ``tolerance`` seconds of now (replays are refused)."""
    try:
        age = abs((time.time() if now is None else now) - float(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


def _forbidden_address(address: str) -> bool:
    """True for loopback, link-local, private, multicast, reserved and unspecified IPs."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified
    )


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
        block_private_addresses: refuse to send to (or be redirected to) loopback,
            link-local and private addresses, checked on every hop. Off by default.
        max_redirects: redirects followed (each re-checked by the guard).

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
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"webhook url must be an http(s) URL, got {url!r}")
        for name, value in [("timeout", timeout), ("backoff", backoff)]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
        for name, value in [("retries", retries), ("max_redirects", max_redirects)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be a whole number >= 0, got {value!r}")
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "WebhookSink needs httpx: pip install 'quota-hooks[alerts]'"
            ) from exc
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

    def __repr__(self) -> str:  # never the URL's query or credentials
        parts = urlsplit(self.url)
        return f"{type(self).__name__}({parts.scheme}://{parts.hostname}{parts.path})"

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
                last = f"{type(exc).__name__}: {exc}"
                continue
            if status < 300:
                return
            last = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # a 4xx will not get better by retrying
        self.failures += 1
        raise AlertDeliveryError(f"{self!r}: {last}")

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        url = self.url
        async with self._httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, trust_env=False
        ) as client:
            for _ in range(self.max_redirects + 1):
                await self._check(url)
                response = await client.post(url, content=body, headers=headers)
                location = response.headers.get("location")
                if response.is_redirect and location:
                    url = urljoin(url, location)
                    continue
                return response.status_code
        raise AlertDeliveryError(f"{self!r}: more than {self.max_redirects} redirects")

    async def _check(self, url: str) -> None:
        if not self.block_private_addresses:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise AlertDeliveryError(f"cannot resolve webhook host {host!r}: {exc}") from exc
        for info in infos:
            address = str(info[4][0])
            if _forbidden_address(address):
                raise AlertDeliveryError(
                    f"refusing to send an alert to {host!r} ({address}): a loopback, "
                    f"link-local or private address (block_private_addresses=True)"
                )


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
        """Send the email in a worker thread."""
        message = self.message(alert)
        await self._thread.run(self._send, message)  # a hung server holds one thread

    def _send(self, message: EmailMessage) -> None:
        smtp_class = smtplib.SMTP_SSL if self.use_ssl else smtplib.SMTP
        with smtp_class(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username is not None:
                smtp.login(self.username, self._password or "")
            smtp.send_message(message)
