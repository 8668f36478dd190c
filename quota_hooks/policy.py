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
from .storage.base import PolicyTable
from .usage import bounded

__all__ = [
    "DEFAULT_MODES", "ENV_VARIABLES", "LIMIT_METRICS", "Mode", "Policies", "QuotaPolicy",
    "Unpriced", "is_scope_key", "parse_policy", "policy_key",
]

Unpriced = Literal["fallback", "refuse", "allow"]
"""What a money budget does with a call whose model has no price (see ``QuotaPolicy``)."""

#: The limit metrics, in the order the status report lists them (see :mod:`quota_hooks.metrics`).
LIMIT_METRICS = METRIC_NAMES
#: What a limit does when a call does not fit, unless the policy says otherwise: wait (for up
#: to ``max_wait``) on the per-minute limits, raise on the per-day limits and the budget.
DEFAULT_MODES: Mapping[str, Mode] = {m.name: m.default_mode for m in METRICS}
_RATE_FIELDS = frozenset(m.name for m in METRICS if not m.is_budget)
_BUDGET_FIELDS: Mapping[str, str] = {str(m.period): m.name for m in METRICS if m.is_budget}

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
_MAX_THRESHOLDS = 10
#: The largest rate limit (requests or tokens): a quadrillion; ``None`` is unlimited.
MAX_LIMIT = 10**15
#: The largest money budget, in USD (its nano-dollars fit every store's 64-bit counters).
MAX_BUDGET_USD = Decimal(10**9)


class QuotaPolicy(BaseModel):
    """Limits and alert thresholds for one scope.

    Attributes:
        rpm: requests per rolling minute.
        rpd: requests per rolling 24 hours.
        tpm: tokens per rolling minute.
        tpd: tokens per rolling 24 hours.
        monthly_budget_usd: USD per calendar month in ``timezone``.
        daily_budget_usd: USD per calendar day in ``timezone`` (from local midnight; none by
            default).
        weekly_budget_usd: USD per ISO week in ``timezone`` (from Monday 00:00; none by
            default). A policy may set any of the three budgets at once (``$10`` a day and
            ``$200`` a month): a call must fit in each, and each is held and charged in the
            same atomic step.
        warning_percent: usage percentage that raises a warning (default 80).
        critical_percent: usage percentage that raises a critical alert (default 95).
        thresholds: the percentages at which alerts fire, each once per crossing (and per
            budget period), e.g. ``[50, 80, 95, 100]``; ``None`` (the default) is
            ``[warning_percent, critical_percent]``. A budget always alerts at 100 too. The
            status levels stay ``warning_percent`` and ``critical_percent``.
        timezone: IANA zone whose calendar bounds the budgets' days, weeks and months
            (default UTC).
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

    rpm: int | None = Field(default=500, ge=0, le=MAX_LIMIT)
    rpd: int | None = Field(default=10_000, ge=0, le=MAX_LIMIT)
    tpm: int | None = Field(default=150_000, ge=0, le=MAX_LIMIT)
    tpd: int | None = Field(default=2_000_000, ge=0, le=MAX_LIMIT)
    monthly_budget_usd: Decimal | None = Field(default=Decimal(100), ge=0, le=MAX_BUDGET_USD,
                                               allow_inf_nan=False)
    daily_budget_usd: Decimal | None = Field(default=None, ge=0, le=MAX_BUDGET_USD,
                                             allow_inf_nan=False)
    weekly_budget_usd: Decimal | None = Field(default=None, ge=0, le=MAX_BUDGET_USD,
                                              allow_inf_nan=False)
    warning_percent: float = Field(default=80.0, gt=0, le=100, allow_inf_nan=False)
    critical_percent: float = Field(default=95.0, gt=0, le=100, allow_inf_nan=False)
    thresholds: tuple[float, ...] | None = None
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

    @field_validator("rpm", "rpd", "tpm", "tpd", "default_max_tokens", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # JSON true is not a limit of 1
            raise ValueError(f"must be a whole number or null, got {value!r}")
        return value

    @field_validator("thresholds")
    @classmethod
    def _rising_thresholds(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return None
        if not value or len(value) > _MAX_THRESHOLDS:
            raise ValueError(f"give 1 to {_MAX_THRESHOLDS} thresholds, got {len(value)}")
        bad = [t for t in value if not (0 < t <= 100) or t != t]
        if bad:
            raise ValueError(f"each threshold must be above 0 and at most 100, got {bad}")
        return tuple(sorted(set(value)))

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

    def budget(self, period: str) -> Decimal | None:
        """The budget of ``period`` (``"day"``, ``"week"`` or ``"month"``) in USD, or None."""
        field = _BUDGET_FIELDS.get(period)
        if field is None:
            raise ConfigurationError(
                f"unknown budget period {period!r}; use day, week or month")
        value: Decimal | None = getattr(self, field)
        return value

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
    """Which policy applies where: a default, one per workspace, and one per scope, from the
    code and from the store.

    Scope policies are keyed ``"kind:value"`` (``"team:ml"``); ``"kind:*"`` is the policy of
    every scope of that kind without its own (``"user:*"``: each user).

    The store's policies (:meth:`use_stored`, keyed ``"workspace:<id>"``, ``"kind:value"``,
    ``"kind:*"`` and ``"*"``) are shared by every process using the store. A lookup takes the
    most specific policy there is, and at equal specificity the store's over the code's:

    * a workspace: the store's for it, the code's for it, the store's ``"*"``, the code's
      default;
    * a scope: the store's for it, the code's for it, the store's ``"kind:*"``, the code's.

    Lookups are dict reads; changes replace the tables (copy on write), so readers never lock.

    Raises:
        ConfigurationError: for anything that is not a :class:`QuotaPolicy`, or a scope key
            that is not ``"kind:value"``, naming it.
    """

    __slots__ = ("_default", "_lock", "_scopes", "_stored", "_workspaces", "explicit")

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
            if not is_scope_key(key) or not isinstance(value, QuotaPolicy):
                raise ConfigurationError(
                    f"scope_policies[{key!r}] must map 'kind:value' to a QuotaPolicy, "
                    f"got {type(value).__name__}")
        self.explicit = bool(default is not None or workspaces or scopes)
        """True when the code gave policies (they seed a store that never held any)."""
        self._default: QuotaPolicy = default if default is not None else QuotaPolicy()
        self._workspaces: dict[str, QuotaPolicy] = dict(workspaces or {})
        self._scopes: dict[str, QuotaPolicy] = {
            _lookup_key(key): value for key, value in (scopes or {}).items()}
        self._stored = _NO_STORED
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._workspaces.keys() | self._stored.workspaces.keys())

    @property
    def default(self) -> QuotaPolicy:
        """The policy of every workspace without its own: the store's ``"*"``, else the
        code's."""
        return self._stored.default or self._default

    @property
    def version(self) -> int:
        """The version of the store's policy table in use (0: none yet)."""
        return self._stored.version

    def for_workspace(self, workspace_id: str) -> QuotaPolicy:
        """The policy of ``workspace_id`` (see the class doc for the order)."""
        stored = self._stored
        if stored.workspaces:
            found = stored.workspaces.get(workspace_id)
            if found is not None:
                return found
        return self._workspaces.get(workspace_id) or stored.default or self._default

    def for_scope(self, kind: str, value: str) -> QuotaPolicy | None:
        """The policy of scope ``kind:value``, or None (a scope without a policy is counted,
        never limited); see the class doc for the order."""
        scopes, stored = self._scopes, self._stored.scopes
        if not scopes and not stored:
            return None
        key = f"{kind}:{value}"
        return (stored.get(key) or scopes.get(key) or stored.get(f"{kind}:*")
                or scopes.get(f"{kind}:*"))

    def source(self, workspace_id: str) -> tuple[str, str]:
        """Where ``workspace_id``'s policy comes from: ``("store", "workspace:<id>")``,
        ``("store", "*")``, ``("code", "workspace:<id>")`` or ``("code", "*")``."""
        if workspace_id in self._stored.workspaces:
            return "store", f"workspace:{workspace_id}"
        if workspace_id in self._workspaces:
            return "code", f"workspace:{workspace_id}"
        return ("store" if self._stored.default is not None else "code"), "*"

    def stored_version(self, key: str) -> int | None:
        """The table version that wrote the stored policy ``key`` (None: not stored)."""
        found = self._stored.versions.get(key)
        return found

    def set(self, workspace_id: str, policy: QuotaPolicy | None) -> None:
        """Give ``workspace_id`` its own policy in code (``None``: back to the default)."""
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

    def code_documents(self) -> dict[str, str]:
        """The code's policies as a store keeps them (what seeds a store)."""
        documents = {"*": self._default.model_dump_json()}
        documents.update({f"workspace:{ws}": p.model_dump_json()
                          for ws, p in self._workspaces.items()})
        documents.update({key: p.model_dump_json() for key, p in self._scopes.items()})
        return documents

    def code_policy(self, key: str) -> QuotaPolicy | None:
        """The code's own policy under a store key (``"*"``, ``"workspace:<id>"``,
        ``"kind:value"``), or None."""
        if key == "*":
            return self._default
        kind, _, rest = key.partition(":")
        if kind == "workspace":
            return self._workspaces.get(rest)
        return self._scopes.get(_lookup_key(key))

    def holds(self, table: PolicyTable) -> bool:
        """True when ``table`` is the table in use (same version, same documents)."""
        stored = self._stored
        return table.version == stored.version and contents_of(table) == stored.contents

    def use_stored(self, table: PolicyTable) -> list[str]:
        """Use the store's policy table from now on. Returns what it could not read (a key
        whose document is not a policy, left out; a field this version cannot read, left out
        of its policy), for the caller to log."""
        stored, bad = _Stored.of(table, self._stored)
        self._stored = stored
        return bad


def _lookup_key(key: str) -> str:
    """A scope policy's key as calls look it up: its kind and value bounded as every scope
    name is (:func:`~quota_hooks.usage.bounded`), so a policy for a 300-character user id
    applies to that user's calls."""
    kind, _, value = key.partition(":")
    return f"{bounded(kind)}:{bounded(value)}"


def is_scope_key(key: object) -> bool:
    """True for ``"kind:value"`` with neither part empty."""
    if not isinstance(key, str):
        return False
    kind, sep, rest = key.partition(":")
    return bool(sep and kind and rest)


def policy_key(name: str) -> str:
    """The store key of a name given by a person: ``"*"`` is the default, ``"kind:value"`` a
    scope (``"team:ml"``, ``"user:*"``), ``"workspace:<id>"`` a workspace, and any other name
    a workspace id (``"acme"`` is ``"workspace:acme"``).

    Raises:
        ConfigurationError: for an empty name, naming it.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"a policy needs a workspace, scope or '*', got {name!r}")
    name = name.strip()
    if name in ("*", "workspace:*"):  # every workspace without its own
        return "*"
    kind, sep, rest = name.partition(":")
    if sep and not (kind and rest):
        raise ConfigurationError(
            f"{name!r}: a scope is kind:value (team:ml, user:*), with neither part empty")
    if is_scope_key(name):
        return name
    return f"workspace:{name}"


def parse_policy(document: str | bytes | Mapping[str, Any], *, source: str = "policy",
                 strict: bool = False, dropped: list[str] | None = None) -> QuotaPolicy:
    """A policy from its JSON (or a dict).

    ``strict``: an unknown field or a bad value is a :class:`ConfigurationError`. Else (a
    stored policy, which a newer version may have written) each field this version cannot
    read is left out, named in ``dropped``, and the others are kept: one field never costs
    the whole policy.

    Raises:
        ConfigurationError: a document that is not a JSON object, or (``strict``) any bad
            field, naming ``source``, the field and the value.
    """
    import json

    try:
        data = json.loads(document) if isinstance(document, (str, bytes)) else dict(document)
    except ValueError as exc:
        raise ConfigurationError(f"{source}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{source}: a policy is a JSON object, got {data!r:.80}")
    unknown = sorted(set(data) - set(QuotaPolicy.model_fields))
    if unknown and strict:
        raise ConfigurationError(f"{source}: unknown policy field(s) {unknown}; use "
                                 f"{sorted(QuotaPolicy.model_fields)}")
    known = {k: v for k, v in data.items() if k in QuotaPolicy.model_fields}
    left_out = list(unknown)
    for _ in range(len(known) + 1):
        try:
            policy = QuotaPolicy(**known)
            break
        except ValidationError as exc:
            if strict:
                raise ConfigurationError(f"{source}: {_config_error(exc)}") from exc
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & set(known)
            if not bad:  # a rule across fields (warning above critical): both go
                bad = {"warning_percent", "critical_percent"} & set(known) or set(known)
            for field in bad:
                known.pop(field, None)
                left_out.append(field)
    else:  # pragma: no cover - every round drops a field
        policy = QuotaPolicy()
    if dropped is not None:
        dropped.extend(sorted(left_out))
    return policy


def contents_of(table: PolicyTable) -> frozenset[tuple[str, str]]:
    """A policy table's keys and documents."""
    return frozenset((key, stored.document) for key, stored in table.policies.items())


class _Stored:
    """The store's policy table, parsed: the default, the workspaces', the scopes'."""

    __slots__ = ("contents", "default", "documents", "scopes", "version", "versions",
                 "workspaces")

    def __init__(self, version: int, default: QuotaPolicy | None,
                 workspaces: dict[str, QuotaPolicy], scopes: dict[str, QuotaPolicy],
                 documents: dict[str, tuple[str, QuotaPolicy]],
                 versions: dict[str, int] | None = None) -> None:
        self.version = version
        self.default = default
        self.workspaces = workspaces
        self.scopes = scopes
        self.documents = documents
        self.versions = versions or {}
        self.contents: frozenset[tuple[str, str]] = frozenset()
        """What the table held, to tell two tables of one version apart (a store that lost
        its data numbers its versions from 1 again)."""

    @classmethod
    def of(cls, table: PolicyTable, previous: _Stored) -> tuple[_Stored, list[str]]:
        workspaces: dict[str, QuotaPolicy] = {}
        scopes: dict[str, QuotaPolicy] = {}
        documents: dict[str, tuple[str, QuotaPolicy]] = {}
        default: QuotaPolicy | None = None
        bad: list[str] = []
        for key, stored in table.policies.items():
            seen = previous.documents.get(key)
            if seen is not None and seen[0] == stored.document:
                policy = seen[1]  # unchanged: the same object (its limits stay cached)
            else:
                dropped: list[str] = []
                try:
                    policy = parse_policy(stored.document, source=f"stored policy {key!r}",
                                          dropped=dropped)
                except ConfigurationError:
                    bad.append(key)
                    continue
                if dropped:
                    bad.append(f"{key} (fields left out: {', '.join(dropped)})")
            documents[key] = (stored.document, policy)
            kind, _, rest = key.partition(":")
            if key == "*":
                default = policy
            elif kind == "workspace" and rest:
                workspaces[rest] = policy
            elif is_scope_key(key):
                scopes[_lookup_key(key)] = policy
            else:
                bad.append(key)
        versions = {key: stored.version for key, stored in table.policies.items()}
        made = cls(table.version, default, workspaces, scopes, documents, versions)
        made.contents = contents_of(table)
        return made, bad


_NO_STORED = _Stored(0, None, {}, {}, {})
