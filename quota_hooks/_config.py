"""The manager's configuration: what its arguments may be, and what the environment sets.

:func:`check_arguments` names the argument and the value a :class:`~quota_hooks.QuotaManager`
cannot take; :func:`from_environment` turns the environment into its arguments, naming the
variable whose value is bad.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .alerts.model import SinkLike
from .alerts.sinks import SlackSink, WebhookSink
from .errors import ConfigurationError
from .policy import ENV_VARIABLES, QuotaPolicy
from .storage import store_from_url

__all__ = ["SLACK_ENV", "STORE_ENV", "WEBHOOK_ENV", "WEBHOOK_SECRET_ENV", "check_arguments",
           "from_environment"]

STORE_ENV = "QUOTA_HOOKS_STORE"
WEBHOOK_ENV = "QUOTA_HOOKS_WEBHOOK_URL"
WEBHOOK_SECRET_ENV = "QUOTA_HOOKS_WEBHOOK_SECRET"
SLACK_ENV = "QUOTA_HOOKS_SLACK_WEBHOOK_URL"


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_arguments(*, policy: QuotaPolicy | None, default_policy: QuotaPolicy | None,
                    recent_limit: object, alert_history: object, sinks: object,
                    policy_refresh: object) -> None:
    """Raise :class:`ConfigurationError`, naming the argument and its value, for arguments
    a manager cannot take."""
    if policy is not None and default_policy is not None:
        raise ConfigurationError("give either policy= or default_policy=, not both")
    if not _whole(recent_limit):
        raise ConfigurationError(f"recent_limit must be a whole number >= 0, got {recent_limit!r}")
    if not _whole(alert_history):
        raise ConfigurationError(
            f"alert_history must be a whole number >= 0, got {alert_history!r}")
    if sinks is not None and (isinstance(sinks, (str, bytes)) or not isinstance(sinks, Iterable)):
        raise ConfigurationError(f"sinks must be a list of sinks, got {sinks!r}")
    if isinstance(policy_refresh, bool) or not isinstance(policy_refresh, (int, float)) or \
            not 0 < policy_refresh < float("inf"):
        raise ConfigurationError(
            f"policy_refresh must be a number of seconds above 0, got {policy_refresh!r}")


def from_environment(env: Mapping[str, str], given: Mapping[str, Any]) -> dict[str, Any]:
    """The manager arguments ``env`` sets, over ``given`` (which win): the seed's ``OPENAI_*``
    limits (:meth:`QuotaPolicy.from_env`), ``QUOTA_HOOKS_STORE`` (a store URL), and alert
    sinks from ``QUOTA_HOOKS_WEBHOOK_URL`` (with ``QUOTA_HOOKS_WEBHOOK_SECRET``) and
    ``QUOTA_HOOKS_SLACK_WEBHOOK_URL``. A bad value raises :class:`ConfigurationError` naming
    the variable."""
    kwargs = dict(given)
    if any(env.get(name, "").strip() for name in ENV_VARIABLES):
        kwargs.setdefault("policy", QuotaPolicy.from_env(env))
    url = env.get(STORE_ENV, "").strip()
    if url and "store" not in kwargs:
        try:
            kwargs["store"] = store_from_url(url)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{STORE_ENV}: {exc}") from exc
    if "sinks" not in kwargs:
        sinks: list[SinkLike] = []
        for name, make in [(WEBHOOK_ENV, WebhookSink), (SLACK_ENV, SlackSink)]:
            hook = env.get(name, "").strip()
            if not hook:
                continue
            secret = env.get(WEBHOOK_SECRET_ENV) or None if make is WebhookSink else None
            try:
                sinks.append(make(hook, secret=secret))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{name}: {exc}") from exc
        if sinks:
            kwargs["sinks"] = sinks
    return kwargs
