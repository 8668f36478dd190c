"""`QuotaPolicy`: the limits of one workspace (or team, or user).

Defaults are the seed guide's: 500 requests per minute, 10,000 per day, 150,000 tokens per
minute, 2,000,000 per day, a $100 monthly budget, warning at 80 % and critical at 95 %.
``None`` means unlimited.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigurationError
from .metrics import METRIC_NAMES, METRICS, Mode
from .metrics import metric as metric_named

__all__ = [
    "DEFAULT_MODES", "ENV_VARIABLES", "LIMIT_METRICS", "Mode", "Policies", "QuotaPolicy",
    "Unpriced",
]

Unpriced = Literal["fallback", "refuse", "allow"]
"""What a money budget does with a call whose model has no price (see ``QuotaPolicy``)."""

#: The limit metrics, in the order the status report lists them (see :mod:`quota_hooks.metrics`).
LIMIT_METRICS = METRIC_NAMES
#: What a limit does when a call does not fit, unless the policy says otherwise: wait (for up
#: to ``max_wait``) on the per-minute limits, raise on the per-day limits and the budget.
DEFAULT_MODES: Mapping[str, Mode] = {m.name: m.default_mode for m in METRICS}
_RATE_FIELDS = frozenset(m.name for m in METRICS if not m.is_budget)

#: Seed environment variable -> (policy field, default).
ENV_VARIABLES: Mapping[str, tuple[str, int]] = {
    "OPENAI_RATE_LIMIT_PER_MINUTE": ("rpm", 500),
    "OPENAI_RATE_LIMIT_PER_DAY": ("rpd", 10_000),
    "OPENAI_TOKEN_LIMIT_PER_MINUTE": ("tpm", 150_000),
    "OPENAI_DAILY_TOKEN_LIMIT": ("tpd", 2_000_000),
    "OPENAI_MONTHLY_BUDGET_USD": ("monthly_budget_usd", 100),
    "OPENAI_WARNING_THRESHOLD_PERCENT": ("warning_percent", 80),
    "OPENAI_CRITICAL_THRESHOLD_PERCENT": ("critical_percent", 95),
}
_UNLIMITED = {"none", "unlimited", "off"}


class QuotaPolicy(BaseModel):
    """Limits and alert thresholds for one scope.

    Attributes:
        rpm: requests per rolling minute.
        rpd: requests per rolling 24 hours.
        tpm: tokens per rolling minute.
        tpd: tokens per rolling 24 hours.
        monthly_budget_usd: USD per calendar month in ``timezone``.
        warning_percent: usage percentage that raises a warning (default 80).
        critical_percent: usage percentage that raises a critical alert (default 95).
        timezone: IANA zone whose calendar month bounds the budget (default UTC).
        unmetered_methods: API methods counted and shown but exempt from request limits (the
            seed guide: model listing has no quota impact).
        mode: what every limit does when a call does not fit: ``"raise"``
            (:class:`~quota_hooks.QuotaExceededError`), ``"wait"`` (up to ``max_wait``
            seconds, then raise) or ``"observe"`` (never block, only count and alert).
            ``None`` (the default) means :data:`DEFAULT_MODES`.
        modes: the mode of single limits, winning over ``mode``:
            ``{"rpm": "wait", "monthly_budget_usd": "raise"}``.
        max_wait: the longest a call waits for a window to free up, in seconds.
        fail_open: when the store is unreachable, let the call go on (and show ``degraded``);
            ``False`` refuses it with :class:`~quota_hooks.StorageError`.
        reservation_ttl: seconds a reservation waits for its call to be recorded. One never
            recorded by then (a stream nobody read to its end or closed, a crashed process)
            keeps what it held, as if the call had used its estimate (default an hour; a
            record arriving later than that counts on its own).
        default_max_tokens: the output tokens a call is assumed to use when its request sets
            no ``max_tokens``/``max_completion_tokens``/``max_output_tokens``.
        unpriced: what the money budget does with a call to a model the price book cannot
            price: ``"fallback"`` (the default) charges it at the book's fallback price (the
            dearest input and output prices it holds, unless set:
            :meth:`~quota_hooks.PriceBook.with_fallback`), so the budget keeps its meaning;
            ``"refuse"`` refuses it before it is sent when a budget is enforced; ``"allow"``
            lets it pass uncharged (its cost stays unknown). Either way the call is counted
            as unpriced, and its cost shows as ``null``, never ``0``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(default=500, ge=0)
    rpd: int | None = Field(default=10_000, ge=0)
    tpm: int | None = Field(default=150_000, ge=0)
    tpd: int | None = Field(default=2_000_000, ge=0)
    monthly_budget_usd: Decimal | None = Field(default=Decimal(100), ge=0, allow_inf_nan=False)
    warning_percent: float = Field(default=80.0, gt=0, le=100, allow_inf_nan=False)
    critical_percent: float = Field(default=95.0, gt=0, le=100, allow_inf_nan=False)
    timezone: str = "UTC"
    unmetered_methods: frozenset[str] = frozenset({"models", "files"})
    mode: Mode | None = None
    modes: dict[str, Mode] = Field(default_factory=dict)
    max_wait: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    fail_open: bool = True
    reservation_ttl: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    default_max_tokens: int = Field(default=1024, ge=0)
    unpriced: Unpriced = "fallback"

    @field_validator("modes")
    @classmethod
    def _known_metrics(cls, value: dict[str, Mode]) -> dict[str, Mode]:
        unknown = sorted(set(value) - set(LIMIT_METRICS))
        if unknown:
            raise ValueError(f"unknown limit metric(s) {unknown}; use {list(LIMIT_METRICS)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _ordered_thresholds(self) -> QuotaPolicy:
        if self.warning_percent > self.critical_percent:
            raise ValueError(
                f"warning_percent ({self.warning_percent:g}) must not exceed "
                f"critical_percent ({self.critical_percent:g})"
            )
        return self

    @classmethod
    def unlimited(cls) -> QuotaPolicy:
        """A policy with no limits: usage is counted and reported, never refused."""
        return cls(rpm=None, rpd=None, tpm=None, tpd=None, monthly_budget_usd=None)

    def mode_for(self, metric: str) -> Mode:
        """What ``metric``'s limit does when a call does not fit."""
        found = self.modes.get(metric)
        if found is not None:
            return found
        if self.mode is not None:
            return self.mode
        return DEFAULT_MODES[metric]

    @property
    def enforced(self) -> bool:
        """True when some limit is set and not in ``observe`` mode."""
        return any(
            self.limit(metric) is not None and self.mode_for(metric) != "observe"
            for metric in LIMIT_METRICS
        )

    def limit(self, metric: str) -> int | Decimal | None:
        """The limit for one of :data:`LIMIT_METRICS`."""
        try:
            return metric_named(metric).limit(self)
        except KeyError:
            raise ConfigurationError(
                f"unknown limit metric {metric!r}; use one of {LIMIT_METRICS}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> QuotaPolicy:
        """A policy from the seed's ``OPENAI_*`` environment variables.

        Unset or empty variables keep their defaults; ``none``/``unlimited`` lifts a limit.
        A bad value raises :class:`ConfigurationError` naming the variable and the value.
        Keyword ``overrides`` win over the environment.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable, (field, _default) in ENV_VARIABLES.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            values[field] = _parse_env(variable, field, raw)
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise _config_error(exc, source="environment") from exc


def _parse_env(variable: str, field: str, raw: str) -> int | float | Decimal | None:
    lowered = raw.lower()
    if lowered in _UNLIMITED:
        if field.endswith("_percent"):
            raise ConfigurationError(f"{variable}={raw!r}: a threshold cannot be unlimited")
        return None
    if field in _RATE_FIELDS:
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ConfigurationError(
                f"{variable}={raw!r}: not a whole number (expected e.g. 500, or 'none')"
            ) from None
        if value < 0:
            raise ConfigurationError(f"{variable}={raw!r}: must not be negative")
        return value
    try:
        number = Decimal(raw)
    except InvalidOperation:
        raise ConfigurationError(f"{variable}={raw!r}: not a number") from None
    if not number.is_finite() or number < 0:
        raise ConfigurationError(f"{variable}={raw!r}: must be a finite, non-negative number")
    if field.endswith("_percent"):
        if not 0 < number <= 100:
            raise ConfigurationError(f"{variable}={raw!r}: must be above 0 and at most 100")
        return float(number)
    return number


def _config_error(exc: ValidationError, source: str | None = None) -> ConfigurationError:
    reverse = {field: variable for variable, (field, _) in ENV_VARIABLES.items()}
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "policy"
        name = reverse.get(field, field) if source == "environment" else field
        value = error.get("input")
        shown = "" if isinstance(value, dict) else f"={value!r}"
        parts.append(f"{name}{shown}: {error['msg']}")
    return ConfigurationError("invalid QuotaPolicy: " + "; ".join(parts))


class Policies:
    """Which policy applies where: a default, one per workspace, and one per scope.

    Scope policies are keyed ``"kind:value"`` (``"team:ml"``); ``"kind:*"`` is the policy of
    every scope of that kind without its own (``"user:*"``: each user). Lookups are dict reads;
    changes replace the table (copy on write), so readers never lock.

    Raises:
        ConfigurationError: for anything that is not a :class:`QuotaPolicy`, or a scope key
            that is not ``"kind:value"``, naming it.
    """

    __slots__ = ("_lock", "_scopes", "_workspaces", "default")

    def __init__(
        self,
        default: QuotaPolicy | None = None,
        workspaces: Mapping[str, QuotaPolicy] | None = None,
        scopes: Mapping[str, QuotaPolicy] | None = None,
    ) -> None:
        for name, value in [
            ("policy", default),
            *((f"policies[{k!r}]", v) for k, v in (workspaces or {}).items()),
        ]:
            if value is not None and not isinstance(value, QuotaPolicy):
                raise ConfigurationError(
                    f"{name} must be a QuotaPolicy, got {type(value).__name__}")
        for key, value in (scopes or {}).items():
            kind, sep, rest = str(key).partition(":")
            if not (isinstance(key, str) and sep and kind and rest) or not isinstance(
                    value, QuotaPolicy):
                raise ConfigurationError(
                    f"scope_policies[{key!r}] must map 'kind:value' to a QuotaPolicy, "
                    f"got {type(value).__name__}")
        self.default: QuotaPolicy = default if default is not None else QuotaPolicy()
        self._workspaces: dict[str, QuotaPolicy] = dict(workspaces or {})
        self._scopes: dict[str, QuotaPolicy] = dict(scopes or {})
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._workspaces)

    def for_workspace(self, workspace_id: str) -> QuotaPolicy:
        """The policy of ``workspace_id``: its own, else the default."""
        return self._workspaces.get(workspace_id, self.default)

    def for_scope(self, kind: str, value: str) -> QuotaPolicy | None:
        """The policy of scope ``kind:value``: its own, else its kind's ``kind:*``, else None
        (a scope without a policy is counted, never limited)."""
        scopes = self._scopes
        if not scopes:
            return None
        return scopes.get(f"{kind}:{value}") or scopes.get(f"{kind}:*")

    def set(self, workspace_id: str, policy: QuotaPolicy | None) -> None:
        """Give ``workspace_id`` its own policy (``None``: back to the default)."""
        if policy is not None and not isinstance(policy, QuotaPolicy):
            raise ConfigurationError(
                f"policy must be a QuotaPolicy or None, got {type(policy).__name__}")
        with self._lock:
            table = dict(self._workspaces)
            if policy is None:
                table.pop(workspace_id, None)
            else:
                table[workspace_id] = policy
            self._workspaces = table
