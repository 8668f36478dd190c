"""Alerts: threshold, rate-limit, quota and degraded alerts through pluggable sinks.

::

    from quota_hooks import QuotaManager
    from quota_hooks.alerts import LoggingSink, WebhookSink

    manager = QuotaManager(sinks=[LoggingSink(), WebhookSink("https://hooks.example/q")])
    manager.add_sink(lambda alert: print(alert.message))   # any callable, sync or async

See :mod:`quota_hooks.alerts.engine` for when alerts fire.
"""

from .engine import AlertEngine
from .model import Alert, AlertKind, AlertSink, CallbackSink, SinkLike, as_sink
from .sinks import (
    AlertDeliveryError,
    EmailSink,
    LoggingSink,
    SlackSink,
    WebhookSink,
    sign,
    verify_signature,
)

__all__ = [
    "Alert",
    "AlertDeliveryError",
    "AlertEngine",
    "AlertKind",
    "AlertSink",
    "CallbackSink",
    "EmailSink",
    "LoggingSink",
    "SinkLike",
    "SlackSink",
    "WebhookSink",
    "as_sink",
    "sign",
    "verify_signature",
]
