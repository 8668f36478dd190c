"""`QuotaManager`: the framework-free core every adapter feeds.

It prices records, counts them per workspace (and per team/user scope) in a store, evaluates
the policy into a :class:`~quota_hooks.status.StatusReport`, and never lets a failure of its own
break the caller's LLM call: such a failure is logged once per kind and shows as ``degraded``.

The seed guide's names keep working::

    from quota_hooks.manager import quota_manager      # configured from the environment
    tracker = quota_manager.get_tracker("ws-1")
    tracker.get_status_data()
    tracker.get_enhanced_status_data()
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import anyio
import anyio.to_thread

from ._exit import close_at_exit
from .alerts.engine import AlertEngine
from .alerts.model import AlertSink, SinkLike
from .errors import ConfigurationError, QuotaExceededError, RateLimitedError, StorageError
from .events import Events
from .policy import QuotaPolicy
from .pricing import PriceBook, format_usd, from_nanos, to_nanos
from .status import (
    Activity,
    EnhancedTracking,
    History,
    HistoryRow,
    MethodUsage,
    ModelUsage,
    StatusReport,
    UnpricedUsage,
    evaluate,
    limit_usage,
    used_fraction,
)
from .storage import MemoryStore, Store, store_from_url
from .storage.base import (
    Aggregate,
    Breakdown,
    Counters,
    Denial,
    Limits,
    Reservation,
    UsageDelta,
    UsageEntry,
    workspace_scope,
)
from .storage.sqlite import RepriceReport
from .usage import MAX_COST, MAX_COUNT, Estimate, UsageRecord, bounded, estimate_tokens
from .windows import day_key, month_bounds, month_key

__all__ = [
    "DEGRADED_SECONDS",
    "QuotaManager",
    "WorkspaceTracker",
    "get_default_manager",
    "set_default_manager",
]

logger = logging.getLogger("quota_hooks")

Clock = Callable[[], float]


class Drainer(Protocol):
    """Something that records calls in the background and can wait until it has caught up
    (an adapter whose framework runs callbacks after the call returns)."""

    def drain(self, timeout: float) -> bool:
        """Block until caught up; False on timeout."""
        ...

    async def adrain(self, timeout: float) -> bool:  # noqa: ASYNC109 - mirrors drain()
        """Wait until caught up; False on timeout."""
        ...


_MAX_WAIT_ROUNDS = 1000


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one ``acquire`` reserves: its scopes, the usage held and each scope's limits."""

    keys: list[str]
    delta: UsageDelta
    limits: dict[str, Limits]
    policies: dict[str, QuotaPolicy]

    @property
    def policy(self) -> QuotaPolicy:
        """The workspace's policy (the first scope): its time zone, TTL and fail policy."""
        return self.policies[self.keys[0]]

    def reserve_args(
        self, now: float
    ) -> tuple[list[str], UsageDelta, dict[str, Limits], float, str, float]:
        """The arguments of ``Store.reserve`` at ``now``."""
        policy = self.policy
        return (
            self.keys,
            self.delta,
            self.limits,
            now,
            month_key(now, policy.timezone),
            policy.reservation_ttl,
        )


def _limits_of(policy: QuotaPolicy) -> Limits:
    """The limits of ``policy`` that may refuse a call (``observe`` ones left out)."""

    def enforced(metric: str) -> Any:
        return getattr(policy, metric) if policy.mode_for(metric) != "observe" else None

    budget = enforced("monthly_budget_usd")
    return Limits(
        rpm=enforced("rpm"),
        rpd=enforced("rpd"),
        tpm=enforced("tpm"),
        tpd=enforced("tpd"),
        budget_nanos=None if budget is None else to_nanos(budget),
    )


#: How long a failure inside tracking keeps a workspace ``degraded``.
DEGRADED_SECONDS = 300.0
STORE_ENV = "QUOTA_HOOKS_STORE"
WEBHOOK_ENV = "QUOTA_HOOKS_WEBHOOK_URL"
WEBHOOK_SECRET_ENV = "QUOTA_HOOKS_WEBHOOK_SECRET"
SLACK_ENV = "QUOTA_HOOKS_SLACK_WEBHOOK_URL"


class QuotaManager:
    """Counts, prices and evaluates LLM usage per workspace.

    Args:
        policy: the policy of every workspace without its own (``default_policy`` is the same
            argument under the issue's other name; give one of them). Defaults to
            ``QuotaPolicy()``, the seed guide's limits.
        policies: per-workspace policies, ``{"ws-a": QuotaPolicy(...)}``.
        scope_policies: policies of other scopes, keyed ``"kind:value"``:
            ``{"team:ml": QuotaPolicy(rpm=50), "user:u-7": QuotaPolicy(tpd=100_000)}``. A call
            with ``scopes={"team": "ml"}`` must fit its workspace's and its team's limits.
            ``"kind:*"`` is the policy of every scope of that kind without its own
            (``{"user:*": QuotaPolicy(rpd=100)}``: each user, 100 requests a day).
        store: where usage lives; a :class:`~quota_hooks.storage.MemoryStore` by default.
        prices: the :class:`~quota_hooks.pricing.PriceBook`; ``PriceBook.default()`` by default.
        clock: returns epoch seconds; inject one in tests (``quota_hooks.testing.ManualClock``).
        recent_limit: how many calls ``recent_activity`` shows (the seed's 10).
        sinks: alert sinks (:mod:`quota_hooks.alerts`), or plain sync/async callables.
        alert_queue_size: alerts held per sink before the oldest is dropped.
        sink_timeout: seconds one alert delivery may take, retries included.
        hysteresis_percent: points below a threshold that usage must fall to re-arm it.

    Thread-safe and task-safe. ``record``/``status`` never need an event loop; ``arecord``/
    ``astatus`` never block one.
    """

    def __init__(
        self,
        policy: QuotaPolicy | None = None,
        *,
        policies: Mapping[str, QuotaPolicy] | None = None,
        scope_policies: Mapping[str, QuotaPolicy] | None = None,
        default_policy: QuotaPolicy | None = None,
        store: Store | None = None,
        prices: PriceBook | None = None,
        clock: Clock | None = None,
        recent_limit: int = 10,
        sinks: Iterable[SinkLike] | None = None,
        alert_queue_size: int = 1000,
        sink_timeout: float = 30.0,
        hysteresis_percent: float = 5.0,
    ) -> None:
        if policy is not None and default_policy is not None:
            raise ConfigurationError("give either policy= or default_policy=, not both")
        chosen = policy if policy is not None else default_policy
        for name, value in [
            ("policy", chosen),
            *((f"policies[{k!r}]", v) for k, v in (policies or {}).items()),
        ]:
            if value is not None and not isinstance(value, QuotaPolicy):
                raise ConfigurationError(
                    f"{name} must be a QuotaPolicy, got {type(value).__name__}"
                )
        if isinstance(recent_limit, bool) or not isinstance(recent_limit, int) or recent_limit < 0:
            raise ConfigurationError(
                f"recent_limit must be a whole number >= 0, got {recent_limit!r}"
            )
        self.default_policy: QuotaPolicy = chosen if chosen is not None else QuotaPolicy()
        self._policies: dict[str, QuotaPolicy] = dict(policies or {})
        for key, value in (scope_policies or {}).items():
            kind, sep, name = key.partition(":")
            if not (sep and kind and name) or not isinstance(value, QuotaPolicy):
                raise ConfigurationError(
                    f"scope_policies[{key!r}] must map 'kind:value' to a QuotaPolicy, "
                    f"got {type(value).__name__}"
                )
        self._scope_policies: dict[str, QuotaPolicy] = dict(scope_policies or {})
        self.sleep: Callable[[float], None] = time.sleep
        """How ``acquire`` waits (a test injects ``ManualClock.sleep``)."""
        self.asleep: Callable[[float], Awaitable[None]] = anyio.sleep
        """How ``aacquire`` waits (a test injects ``ManualClock.asleep``)."""
        self.token_estimator: Callable[[str | bytes], int] = estimate_tokens
        """Prompt tokens of a request body, for reservations (see :func:`estimate_tokens`)."""
        self._limits_cache: dict[int, tuple[QuotaPolicy, Limits | None]] = {}
        self.denials = 0
        """Calls refused by an enforced limit."""
        self.fail_open_calls = 0
        """Calls let through without a reservation because the store failed (fail_open)."""
        self.store: Store = store if store is not None else MemoryStore()
        self.prices: PriceBook = prices if prices is not None else PriceBook.default()
        self.clock: Clock = clock if clock is not None else time.time
        self.recent_limit = recent_limit
        self._failures: dict[str, float] = {}
        self._provider_limits: dict[str, dict[str, dict[str, str]]] = {}
        self._drainers: weakref.WeakSet[Drainer] = weakref.WeakSet()
        self._logged_kinds: set[str] = set()
        self._cross_checked: set[str] = set()
        self._lock = threading.Lock()
        self.tracking_errors = 0
        """How many failures inside tracking were caught (never raised into a call)."""
        self._alert_options: dict[str, Any] = {
            "queue_size": alert_queue_size,
            "sink_timeout": sink_timeout,
            "hysteresis_percent": hysteresis_percent,
        }
        self.alerts: AlertEngine | None = None
        """The alert engine; created with the first sink."""
        self.events = Events()
        """Live changes and alerts for listeners (the WebSocket, ``quota-hooks demo``)."""
        self._publishing_alerts = False
        if sinks is not None:
            if isinstance(sinks, (str, bytes)) or not isinstance(sinks, Iterable):
                raise ConfigurationError(f"sinks must be a list of sinks, got {sinks!r}")
            self.alerts = AlertEngine(self, sinks, **self._alert_options)
            self.add_drainer(self.alerts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> QuotaManager:
        """A manager configured from the environment: the seed's ``OPENAI_*`` limits
        (:meth:`QuotaPolicy.from_env`), ``QUOTA_HOOKS_STORE`` (a store URL), and alert sinks
        from ``QUOTA_HOOKS_WEBHOOK_URL`` (with ``QUOTA_HOOKS_WEBHOOK_SECRET``) and
        ``QUOTA_HOOKS_SLACK_WEBHOOK_URL``."""
        env = os.environ if environ is None else environ
        kwargs.setdefault("policy", QuotaPolicy.from_env(env))
        url = env.get(STORE_ENV, "").strip()
        if url and "store" not in kwargs:
            try:
                kwargs["store"] = store_from_url(url)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{STORE_ENV}: {exc}") from exc
        if "sinks" not in kwargs:
            from .alerts.sinks import SlackSink, WebhookSink

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
        return cls(**kwargs)

    def __repr__(self) -> str:
        return f"QuotaManager(store={self.store!r}, policies={len(self._policies)})"

    # ------------------------------------------------------------------ policy
    def policy_for(self, workspace_id: str) -> QuotaPolicy:
        """The policy that applies to ``workspace_id``."""
        return self._policies.get(workspace_id, self.default_policy)

    def set_policy(self, workspace_id: str, policy: QuotaPolicy | None) -> None:
        """Give ``workspace_id`` its own policy (``None`` returns it to the default)."""
        with self._lock:
            policies = dict(self._policies)
            if policy is None:
                policies.pop(workspace_id, None)
            else:
                policies[workspace_id] = policy
            self._policies = policies

    def now(self) -> float:
        """The manager's clock, in epoch seconds."""
        return self.clock()

    # ------------------------------------------------------------------ enforcement
    def acquire(
        self,
        workspace_id: str,
        estimate: Estimate,
        *,
        scopes: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> Reservation | None:
        """Reserve ``estimate`` against every enforced limit of the workspace and its
        ``scopes``, atomically, before a call is sent. Pass the result to :meth:`record`.

        Returns ``None`` when nothing is enforced (or the store failed and ``fail_open``).
        Raises :class:`RateLimitedError` (rpm, rpd, tpm, tpd) or :class:`QuotaExceededError`
        (the budget) for a limit in ``raise`` mode, or in ``wait`` mode once ``max_wait``
        would be exceeded; :class:`StorageError` when the store fails and not ``fail_open``.
        ``wait=False`` treats ``wait`` limits as ``raise`` (for callers that must not block).
        """
        plan = self._plan(workspace_id, estimate, scopes)
        if plan is None:
            return None
        waited = 0.0
        for _ in range(_MAX_WAIT_ROUNDS):
            try:
                result = self.store.reserve(*plan.reserve_args(self.clock()))
            except Exception as exc:
                self._store_failed(workspace_id, plan, exc)  # raises unless fail_open
                return None
            outcome = self._outcome(result, plan, waited, wait)
            if isinstance(outcome, Reservation):
                return outcome
            self.sleep(outcome)
            waited += outcome
        raise RuntimeError(
            f"acquire for {workspace_id!r} did not settle after {_MAX_WAIT_ROUNDS} waits"
        )

    async def aacquire(
        self,
        workspace_id: str,
        estimate: Estimate,
        *,
        scopes: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> Reservation | None:
        """Async :meth:`acquire`: waits with ``await``, never blocks the event loop."""
        plan = self._plan(workspace_id, estimate, scopes)
        if plan is None:
            return None
        waited = 0.0
        for _ in range(_MAX_WAIT_ROUNDS):
            try:
                result = await self.store.areserve(*plan.reserve_args(self.clock()))
            except Exception as exc:
                self._store_failed(workspace_id, plan, exc)  # raises unless fail_open
                return None
            outcome = self._outcome(result, plan, waited, wait)
            if isinstance(outcome, Reservation):
                return outcome
            await self.asleep(outcome)
            waited += outcome
        raise RuntimeError(
            f"acquire for {workspace_id!r} did not settle after {_MAX_WAIT_ROUNDS} waits"
        )

    def release(self, reservation: Reservation | None) -> None:
        """Give a reservation back: the call was never made (it failed before the provider
        saw it). Never raises."""
        if reservation is None:
            return
        try:
            self.store.release(reservation, self.clock())
        except Exception as exc:
            self.note_tracking_failure("release", exc)

    async def arelease(self, reservation: Reservation | None) -> None:
        """Async :meth:`release`."""
        if reservation is None:
            return
        try:
            await self.store.arelease(reservation, self.clock())
        except Exception as exc:
            self.note_tracking_failure("release", exc)

    def _plan(
        self, workspace_id: str, estimate: Estimate, scopes: Mapping[str, str] | None
    ) -> _Plan | None:
        _check_estimate(workspace_id, estimate, scopes)
        policy = self.policy_for(workspace_id)
        keys = [workspace_scope(workspace_id)]
        policies = {keys[0]: policy}
        for kind, value in (scopes or {}).items():
            kind = bounded(str(kind))
            key = f"{kind}:{bounded(str(value))}"
            keys.append(key)
            # A policy of this scope, else the default of its kind ("user:*": every user).
            found = self._scope_policies.get(key) or self._scope_policies.get(f"{kind}:*")
            if found is not None:
                policies[key] = found
        limits = {}
        for key, scope_policy in policies.items():
            enforced = self._enforced_limits(scope_policy)
            if enforced is not None:
                limits[key] = enforced
        if not limits:
            return None
        inputs, outputs = _count(estimate.input_tokens), _count(estimate.output_tokens)
        nanos = self._estimate_nanos(estimate, inputs, outputs)
        if nanos is None:  # a model without a price: what the policy says, never free
            if policy.unpriced == "refuse" and any(
                lim.budget_nanos is not None for lim in limits.values()
            ):
                self.denials += 1
                raise QuotaExceededError(
                    keys[0], "monthly_budget_usd", 0.0,
                    float(policy.monthly_budget_usd or 0), None,
                    f"{keys[0]}: model {estimate.model!r} has no price, and the policy refuses "
                    f"unpriced calls under a money budget (unpriced='refuse'); the call was not "
                    f"sent. Give it a price (PriceBook.with_overrides, QUOTA_HOOKS_PRICES_FILE) "
                    f"or set unpriced='fallback'",
                )
            nanos = 0 if policy.unpriced == "allow" else to_nanos(self.prices.fallback_cost(
                _units_of(estimate, inputs, outputs)))
        delta = UsageDelta(
            requests=0 if estimate.api_method in policy.unmetered_methods else 1,
            tokens=inputs + outputs,
            cost_nanos=nanos,
        )
        if not (delta.requests or delta.tokens or delta.cost_nanos):
            return None
        return _Plan(keys, delta, limits, policies)

    def _estimate_nanos(self, estimate: Estimate, inputs: int, outputs: int) -> int | None:
        """What a call is expected to cost, from the facts of its request: its tokens, and
        the images or characters it asks for (priced per image, per character, or, for an
        image model billed by tokens, at :data:`IMAGE_OUTPUT_TOKENS` each). None when no
        price is known."""
        if not (estimate.images or estimate.characters):
            return self.prices.estimate_nanos(estimate.model, inputs, outputs, estimate.provider)
        rates = self.prices.rates(estimate.model, estimate.provider)
        if rates is None:
            return None
        if estimate.images and "images" in rates.priced:
            record = UsageRecord(model=estimate.model, provider=estimate.provider or "unknown",
                                 images=_count(estimate.images),
                                 image_size=estimate.image_size,
                                 image_quality=estimate.image_quality)
        elif estimate.characters and "characters" in rates.priced:
            record = UsageRecord(model=estimate.model, provider=estimate.provider or "unknown",
                                 characters=_count(estimate.characters))
        else:
            record = _units_of(estimate, inputs, outputs)
        cost = self.prices.cost(record)
        return cost.nanos if cost.nanos is not None else None

    def _enforced_limits(self, policy: QuotaPolicy) -> Limits | None:
        """The limits of ``policy`` that may refuse a call, or None; worked out once per
        policy (policies are frozen), not on every call."""
        cached = self._limits_cache.get(id(policy))
        if cached is None or cached[0] is not policy:
            if len(self._limits_cache) > 1024:
                self._limits_cache.clear()
            cached = (policy, _limits_of(policy) if policy.enforced else None)
            self._limits_cache[id(policy)] = cached
        return cached[1]

    def _outcome(
        self, result: Reservation | Denial, plan: _Plan, waited: float, wait: bool
    ) -> Reservation | float:
        """The reservation, or the seconds to wait before trying again; raises a refusal."""
        if isinstance(result, Reservation):
            return result
        policy = plan.policies[result.scope]
        if (
            wait
            and policy.mode_for(result.limit) == "wait"
            and result.retry_after is not None
            and waited + result.retry_after <= policy.max_wait
        ):
            return result.retry_after
        self.denials += 1
        raise self._denied(result, plan.policies)

    def _denied(self, denial: Denial, policies: Mapping[str, QuotaPolicy]) -> QuotaExceededError:
        if denial.limit == "monthly_budget_usd":
            used, maximum = from_nanos(denial.used), from_nanos(denial.maximum)
            return QuotaExceededError(
                denial.scope,
                denial.limit,
                float(used),
                float(maximum),
                None,
                f"{denial.scope}: the monthly budget of {format_usd(maximum)} has no room for "
                f"this call ({format_usd(used)} spent or held); the call was not sent",
            )
        wait = policies[denial.scope].max_wait
        message = (
            f"{denial.scope}: {denial.limit} limit reached ({denial.used} of {denial.maximum} "
            f"used); the call was not sent"
        )
        if denial.retry_after is not None:
            message += f", retry after {denial.retry_after:.1f}s"
            if policies[denial.scope].mode_for(denial.limit) == "wait":
                message += f" (more than max_wait={wait:g}s)"
        return RateLimitedError(
            denial.scope, denial.limit, denial.used, denial.maximum, denial.retry_after, message
        )

    def _store_failed(self, workspace_id: str, plan: _Plan, exc: BaseException) -> None:
        """A store failure during ``acquire``: the call goes on (``fail_open``: returns None,
        counted) or is refused with :class:`StorageError`."""
        self.note_tracking_failure("acquire", exc, workspace_id)
        if plan.policy.fail_open:
            self.fail_open_calls += 1
            return
        self.denials += 1
        raise StorageError(
            f"workspace {workspace_id!r}: the call was refused because the usage store failed "
            f"and fail_open=False: {exc}"
        ) from exc

    # ------------------------------------------------------------------ recording
    def prepare(self, record: UsageRecord, reservation: Reservation | None = None) -> UsageEntry:
        """Price ``record`` and compute what it adds to its scopes. Pure: no I/O.

        A model without a price is charged as the policy's ``unpriced`` says (the fallback
        price by default); its cost stays unknown. A record whose counts could not be trusted
        (``invalid_fields``) settles at least at its ``reservation``'s estimate.
        """
        policy = self.policy_for(record.workspace_id)
        cost, source, charge, unpriced_nanos = self._price(record, policy)
        limited = record.status_code == 429
        tokens = record.total_tokens
        if reservation is not None and record.invalid_fields:
            tokens = max(tokens, reservation.delta.tokens)
            if charge < reservation.delta.cost_nanos:
                unpriced_nanos += (reservation.delta.cost_nanos - charge) if cost is None else 0
                charge = reservation.delta.cost_nanos
        delta = UsageDelta(
            requests=0 if record.api_method in policy.unmetered_methods else 1,
            tokens=tokens,
            cost_nanos=charge,
            calls=1,
            errors=0 if record.success or limited else 1,
            rate_limited=1 if limited else 0,
            unpriced_nanos=unpriced_nanos,
        )
        scopes: tuple[str, ...] = (workspace_scope(record.workspace_id),)
        if record.scopes:
            scopes += tuple(f"{kind}:{value}" for kind, value in record.scopes.items())
        now = self.clock()
        # The record's own time decides its minute, day and month (never after now).
        at = now if record.timestamp is None else min(record.timestamp.timestamp(), now)
        month = month_key(at, policy.timezone)
        day = day_key(at, policy.timezone)
        return UsageEntry(record, scopes, delta, now, month, cost, source, day, at)

    def _price(self, record: UsageRecord, policy: QuotaPolicy
               ) -> tuple[Decimal | None, str | None, int, int]:
        """``(cost, price source, charge, unpriced part of the charge)`` of a record: its own
        cost if it has one, else the price book's; a model without a price is charged as the
        policy's ``unpriced`` says (nano-dollars)."""
        cost, source = record.cost, record.price_source
        nanos: int | None = None
        if cost is None:
            priced = self.prices.cost(record)
            cost, source, nanos = priced.usd, priced.source, priced.nanos
            if record.reported_cost is not None and cost is not None:
                self._cross_check(record, cost)
        elif source is None:
            source = "provided"
        if cost is not None and cost > MAX_COST:
            logger.warning(
                "quota-hooks: a %s call of model %r priced at %s (over MAX_COST) is counted "
                "as unpriced", record.api_method, record.model, cost,
            )
            cost, source, nanos = None, None, None
        if cost is not None:
            return cost, source, nanos if nanos is not None else to_nanos(cost), 0
        if policy.unpriced == "allow":
            return None, source, 0, 0
        charge = to_nanos(self.prices.fallback_cost(record))
        return None, source, charge, charge

    def reprice(self, since: float, *, dry_run: bool = False) -> RepriceReport:
        """Price again, with today's price book, every record since ``since`` (epoch
        seconds): its stored tokens at its own time, provider and service tier. Month totals
        and breakdowns move by the difference. Needs a store that keeps every record
        (:class:`~quota_hooks.storage.SQLiteStore`)."""
        reprice = getattr(self.store, "reprice", None)
        if reprice is None:
            raise ConfigurationError(
                f"reprice needs a store that keeps every record (SQLite); {self.store!r} "
                "keeps totals and the latest records only")

        def price(record: UsageRecord) -> tuple[Decimal | None, str | None, int, int]:
            return self._price(record, self.policy_for(record.workspace_id))

        report: RepriceReport = reprice(since, price, dry_run=dry_run)
        return report

    def _cross_check(self, record: UsageRecord, cost: Decimal) -> None:
        """Warn, once per model, when another layer's cost (litellm's ``response_cost``)
        differs from the price book's by more than 1 %."""
        reported = record.reported_cost
        assert reported is not None
        if abs(reported - cost) <= cost / 100 or record.model in self._cross_checked:
            return
        with self._lock:
            if record.model in self._cross_checked or len(self._cross_checked) > 4096:
                return
            self._cross_checked.add(record.model)
        logger.warning(
            "quota-hooks: %s reported %s for a %s call of model %r, the price book %s (%s); "
            "quota-hooks counts the price book's. QuotaLogger(cost_source=\"litellm\") counts "
            "litellm's instead.", record.source, reported, record.api_method, record.model,
            cost, record.provider,
        )

    def record(self, record: UsageRecord, reservation: Reservation | None = None) -> None:
        """Count one call (and settle its ``reservation``, if it had one).

        Never raises on a failure inside tracking: it is logged, counted and shown as
        ``degraded``. A wrong argument (not a :class:`UsageRecord`) is a
        :class:`ConfigurationError` naming it. The priced record shows in ``status()``;
        ``prices.cost(record)`` prices one directly.
        """
        _check_record(record, reservation)
        try:
            self.store.commit(self.prepare(record, reservation), reservation)
        except Exception as exc:
            self.note_tracking_failure("record", exc, record.workspace_id)
            return
        alerts = self.alerts
        if alerts is not None:
            alerts.notify(record.workspace_id, rate_limited=record.status_code == 429)
        self.events.changed(record.workspace_id)

    async def arecord(self, record: UsageRecord, reservation: Reservation | None = None) -> None:
        """Async :meth:`record`: never blocks the event loop, never raises on a failure
        inside tracking."""
        _check_record(record, reservation)
        try:
            await self.store.acommit(self.prepare(record, reservation), reservation)
        except Exception as exc:
            self.note_tracking_failure("record", exc, record.workspace_id)
            return
        alerts = self.alerts
        if alerts is not None:
            alerts.notify(record.workspace_id, rate_limited=record.status_code == 429)
        self.events.changed(record.workspace_id)

    def note_tracking_failure(
        self, kind: str, exc: BaseException, workspace_id: str | None = None
    ) -> None:
        """Count a failure inside tracking: logged once per ``kind``, ``degraded`` for 5 minutes.

        Adapters call this instead of letting a tracking error reach the user's call.
        """
        with self._lock:
            self.tracking_errors += 1
            self._failures[workspace_id if workspace_id is not None else "*"] = self.clock()
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        if first:
            logger.warning(
                "quota-hooks: tracking failed (%s) and was skipped; the call went on. "
                "Further %r failures are counted, not logged.",
                kind,
                kind,
                exc_info=exc,
            )
        alerts = self.alerts
        if alerts is not None:
            alerts.note_degraded(workspace_id)

    def note_provider_limits(
        self, workspace_id: str, provider: str, headers: Mapping[str, str]
    ) -> None:
        """Keep the provider's latest ``x-ratelimit-*`` headers for the status report.

        ``{"x-ratelimit-remaining-requests": "499", ...}`` shows as
        ``provider_limits[provider] = {"remaining_requests": "499", ...}``.
        """
        limits = {
            key.lower().removeprefix("x-ratelimit-").replace("-", "_"): str(value)
            for key, value in headers.items()
        }
        with self._lock:
            self._provider_limits.setdefault(workspace_id, {})[provider] = limits

    def _degraded(self, workspace_id: str, now: float) -> bool:
        health = getattr(self.store, "health", None)
        if callable(health) and health() is not None:
            return True  # the store itself is failing (a full disk, dropped records)
        failures = self._failures
        if not failures:
            return False
        last = max(failures.get(workspace_id, -1.0), failures.get("*", -1.0))
        return last >= 0 and now - last < DEGRADED_SECONDS

    # ------------------------------------------------------------------ status
    def status(
        self, workspace_id: str, *, enhanced: bool = True, recent: int | None = None
    ) -> StatusReport:
        """The status of ``workspace_id`` now. Raises :class:`StorageError` if the store fails."""
        now = self.clock()
        policy = self.policy_for(workspace_id)
        month = month_key(now, policy.timezone)
        scope = workspace_scope(workspace_id)
        store = self.store
        with _reading("status", workspace_id):
            counters = store.counters(scope, now, month)
            extra = None
            if enhanced:
                extra = (
                    store.breakdown(scope, month, "model"),
                    store.breakdown(scope, month, "api_method"),
                    store.recent(scope, self.recent_limit if recent is None else recent),
                )
        return self._report(workspace_id, policy, now, counters, extra)

    async def astatus(
        self, workspace_id: str, *, enhanced: bool = True, recent: int | None = None
    ) -> StatusReport:
        """Async :meth:`status`."""
        now = self.clock()
        policy = self.policy_for(workspace_id)
        month = month_key(now, policy.timezone)
        scope = workspace_scope(workspace_id)
        store = self.store
        with _reading("status", workspace_id):
            counters = await store.acounters(scope, now, month)
            extra = None
            if enhanced:
                extra = (
                    await store.abreakdown(scope, month, "model"),
                    await store.abreakdown(scope, month, "api_method"),
                    await store.arecent(scope, self.recent_limit if recent is None else recent),
                )
        return self._report(workspace_id, policy, now, counters, extra)

    def _report(
        self,
        workspace_id: str,
        policy: QuotaPolicy,
        now: float,
        c: Counters,
        extra: tuple[dict[str, Aggregate], dict[str, Aggregate], list[UsageRecord]] | None,
    ) -> StatusReport:
        spent = from_nanos(c.cost_month_nanos)
        exact: dict[str, tuple[int | Decimal, int | Decimal | None]] = {
            "rpm": (c.requests_minute, policy.rpm),
            "rpd": (c.requests_day, policy.rpd),
            "tpm": (c.tokens_minute, policy.tpm),
            "tpd": (c.tokens_day, policy.tpd),
            "monthly_budget_usd": (spent, policy.monthly_budget_usd),
        }
        usages = {metric: limit_usage(*pair) for metric, pair in exact.items()}
        fractions = {
            metric: used_fraction(current, limit)
            for metric, (current, limit) in exact.items()
            if limit is not None
        }
        failing = c.calls_minute > 0 and c.errors_minute * 2 > c.calls_minute
        status, level = evaluate(
            fractions,
            warning_percent=policy.warning_percent,
            critical_percent=policy.critical_percent,
            rate_limited_recently=c.rate_limited_minute > 0,
            degraded=failing or self._degraded(workspace_id, now),
        )
        enhanced = None
        if extra is not None:
            models, methods, recent = extra
            enhanced = EnhancedTracking(
                models_breakdown={
                    name: ModelUsage(
                        request_count=a.requests,
                        tokens_used=a.tokens,
                        cost_usd=_priced_usd(a),
                        input_tokens=a.input_tokens,
                        output_tokens=a.output_tokens,
                        error_count=a.errors,
                        unpriced_count=a.unpriced,
                        unpriced_charge_usd=float(from_nanos(a.unpriced_nanos)),
                    )
                    for name, a in sorted(models.items())
                },
                api_methods_breakdown={
                    name: MethodUsage(
                        request_count=a.requests,
                        error_count=a.errors,
                        tokens_used=a.tokens,
                        cost_usd=_priced_usd(a),
                        unpriced_count=a.unpriced,
                        unpriced_charge_usd=float(from_nanos(a.unpriced_nanos)),
                    )
                    for name, a in sorted(methods.items())
                },
                recent_activity=[_activity(r) for r in recent],
            )
        return StatusReport(
            workspace_id=workspace_id,
            status=status,
            requests_per_minute=usages["rpm"],
            requests_per_day=usages["rpd"],
            tokens_per_minute=usages["tpm"],
            tokens_per_day=usages["tpd"],
            monthly_budget_usd=usages["monthly_budget_usd"],
            alert_level=level,
            updated_at=_iso(datetime.fromtimestamp(now, UTC)),
            provider_limits=self._provider_limits.get(workspace_id, {}),
            thresholds={"warning": float(policy.warning_percent),
                        "critical": float(policy.critical_percent)},
            unpriced=UnpricedUsage(calls=c.unpriced_month_calls,
                                   charge_usd=float(from_nanos(c.unpriced_month_nanos)),
                                   policy=policy.unpriced),
            enhanced_tracking=enhanced,
        )

    def workspaces(self) -> list[str]:
        """Every workspace with recorded usage, sorted."""
        return self.store.workspaces()

    async def aworkspaces(self) -> list[str]:
        """Async :meth:`workspaces`."""
        return await self.store.aworkspaces()

    def history(
        self, workspace_id: str, *, since: float | None = None, by: Breakdown = "day"
    ) -> History:
        """Usage of ``workspace_id`` since ``since`` (epoch seconds; 30 days ago by default),
        per calendar day, model or API method. Reads the month totals, never the history.

        Per day the range is exact; per model or method it is counted in whole budget months
        (the months that ``since`` and now fall in, and those between).
        """
        months, first_day = self._history_months(workspace_id, since)
        scope = workspace_scope(workspace_id)
        with _reading("history", workspace_id):
            tables = [self.store.breakdown(scope, month, by) for month in months]
        return _history(workspace_id, by, first_day, months, tables)

    async def ahistory(
        self, workspace_id: str, *, since: float | None = None, by: Breakdown = "day"
    ) -> History:
        """Async :meth:`history`."""
        months, first_day = self._history_months(workspace_id, since)
        scope = workspace_scope(workspace_id)
        with _reading("history", workspace_id):
            tables = [await self.store.abreakdown(scope, month, by) for month in months]
        return _history(workspace_id, by, first_day, months, tables)

    def _history_months(self, workspace_id: str, since: float | None) -> tuple[list[str], str]:
        now = self.clock()
        start = now - 30 * 86_400 if since is None else since
        if not math.isfinite(start) or start > now:
            raise ValueError(f"since must be a time in the past, got {since!r}")
        zone = self.policy_for(workspace_id).timezone
        months: list[str] = []
        start = moment = max(start, now - 400 * 86_400)  # stores keep about 13 months
        while moment <= now:
            months.append(month_key(moment, zone))
            moment = month_bounds(moment, zone)[1]
        last = month_key(now, zone)
        if months[-1] != last:
            months.append(last)
        return months, day_key(start, zone)

    def get_tracker(self, workspace_id: str) -> WorkspaceTracker:
        """The seed guide's per-workspace view: ``get_status_data()`` and friends."""
        return WorkspaceTracker(self, workspace_id)

    # ------------------------------------------------------------------ alerts
    def add_sink(self, sink: SinkLike) -> AlertSink:
        """Send alerts to ``sink`` too (an :class:`~quota_hooks.alerts.AlertSink`, or any sync
        or async callable taking an :class:`~quota_hooks.alerts.Alert`)."""
        with self._lock:
            if self.alerts is None:
                self.alerts = AlertEngine(self, (), **self._alert_options)
                self._drainers.add(self.alerts)
        return self.alerts.add_sink(sink)

    def publish_alerts(self) -> None:
        """Pass every alert sent to :attr:`events` too, for live listeners (the server's
        WebSocket pushes them). Idempotent."""
        with self._lock:
            if self._publishing_alerts:
                return
            self._publishing_alerts = True
        self.add_sink(_PublishSink(self.events))

    # ------------------------------------------------------------------ background work
    def add_drainer(self, drainer: Drainer) -> None:
        """Register background work for :meth:`drain` to wait on (held weakly)."""
        self._drainers.add(drainer)

    def drain(self, timeout: float = 5.0) -> bool:
        """Block until every call already made has been recorded (LiteLLM, for one, records
        after the call returns). False if ``timeout`` seconds were not enough."""
        return all([drainer.drain(timeout) for drainer in list(self._drainers)])

    async def adrain(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - mirrors drain()
        """Async :meth:`drain`: ``await manager.adrain()`` before reading fresh totals."""
        return all([await drainer.adrain(timeout) for drainer in list(self._drainers)])

    # ------------------------------------------------------------------ lifecycle
    def close(self, timeout: float = 5.0) -> None:
        """Deliver queued alerts (up to ``timeout`` seconds), then flush and close the store.

        The process-wide default manager is closed at interpreter exit; so are the SQLite
        writers and alert senders of any other manager (see ``quota_hooks._exit``).
        """
        started = time.monotonic()
        if self.alerts is not None:
            self.alerts.close(timeout)
        self.store.close(timeout=max(0.05, timeout - (time.monotonic() - started)))

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        if self.alerts is not None:
            await self.alerts.adrain()
            await anyio.to_thread.run_sync(self.alerts.close)
        await self.store.aclose()

    def __enter__(self) -> QuotaManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> QuotaManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class WorkspaceTracker:
    """One workspace's view of a :class:`QuotaManager` (the seed guide's tracker)."""

    def __init__(self, manager: QuotaManager, workspace_id: str) -> None:
        self.manager = manager
        self.workspace_id = workspace_id

    def __repr__(self) -> str:
        return f"WorkspaceTracker({self.workspace_id!r})"

    def get_status_data(self) -> dict[str, Any]:
        """The seed status JSON as a dict, without ``enhanced_tracking``."""
        return self.manager.status(self.workspace_id, enhanced=False).to_dict(enhanced=False)

    def get_enhanced_status_data(self, recent: int | None = None) -> dict[str, Any]:
        """The seed status JSON with ``enhanced_tracking`` (models, methods, recent calls)."""
        return self.manager.status(self.workspace_id, recent=recent).to_dict()

    async def aget_status_data(self) -> dict[str, Any]:
        """Async :meth:`get_status_data`."""
        report = await self.manager.astatus(self.workspace_id, enhanced=False)
        return report.to_dict(enhanced=False)

    async def aget_enhanced_status_data(self, recent: int | None = None) -> dict[str, Any]:
        """Async :meth:`get_enhanced_status_data`."""
        return (await self.manager.astatus(self.workspace_id, recent=recent)).to_dict()


#: Output tokens an image is assumed to take, for the reservation of an image model billed
#: by tokens (gpt-image-1 at high quality, 1536x1024: 6,208).
IMAGE_OUTPUT_TOKENS = 6_240


def _units_of(estimate: Estimate, inputs: int, outputs: int) -> UsageRecord:
    """An estimate as token usage: images at :data:`IMAGE_OUTPUT_TOKENS` of output each."""
    images = _count(estimate.images)
    return UsageRecord(model=estimate.model, provider=estimate.provider or "unknown",
                       input_tokens=inputs,
                       output_tokens=outputs + images * IMAGE_OUTPUT_TOKENS,
                       images=images, image_size=estimate.image_size,
                       image_quality=estimate.image_quality,
                       characters=_count(estimate.characters))


def _check_record(record: object, reservation: object) -> None:
    if not isinstance(record, UsageRecord):
        raise ConfigurationError(
            f"record must be a UsageRecord, got {type(record).__name__}: {record!r:.80}")
    if reservation is not None and not isinstance(reservation, Reservation):
        raise ConfigurationError(
            f"reservation must be the Reservation acquire() returned, or None, got "
            f"{type(reservation).__name__}")


def _check_estimate(workspace_id: object, estimate: object,
                    scopes: object) -> None:
    if not isinstance(workspace_id, str) or not workspace_id:
        raise ConfigurationError(f"workspace_id must be a non-empty string, got {workspace_id!r}")
    if not isinstance(estimate, Estimate):
        raise ConfigurationError(
            f"estimate must be an Estimate, got {type(estimate).__name__}: {estimate!r:.80}")
    if scopes is not None and not isinstance(scopes, Mapping):
        raise ConfigurationError(f"scopes must be a mapping of kind to value, got {scopes!r:.80}")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _count(value: object) -> int:
    """An estimate's token count, trusted like a record's (see :mod:`quota_hooks.usage`)."""
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    return UsageRecord(input_tokens=value).input_tokens  # type: ignore[arg-type]


@contextlib.contextmanager
def _reading(what: str, workspace_id: str) -> Iterator[None]:
    """Store reads of one report: any failure is a :class:`StorageError` naming it."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"reading the {what} of {workspace_id!r} failed: {exc}") from exc


class _PublishSink:
    """The alert sink of :meth:`QuotaManager.publish_alerts`."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def __repr__(self) -> str:
        return "PublishSink()"

    async def send(self, alert: Any) -> None:
        self.events.alert(alert)


def _history(
    workspace_id: str, by: Breakdown, first_day: str, months: list[str],
    tables: list[dict[str, Aggregate]],
) -> History:
    sums: dict[str, list[int]] = {}
    for table in tables:
        for name, a in table.items():
            if by == "day" and name < first_day:
                continue
            row = sums.setdefault(name, [0] * 8)
            for i, value in enumerate((a.requests, a.errors, a.tokens, a.input_tokens,
                                       a.output_tokens, a.cost_nanos, a.unpriced,
                                       a.unpriced_nanos)):
                row[i] += value
    rows = {
        name: HistoryRow(
            request_count=r[0], error_count=r[1], tokens_used=r[2], input_tokens=r[3],
            output_tokens=r[4], cost_usd=_priced_usd(Aggregate(*r)), unpriced_count=r[6],
            unpriced_charge_usd=float(from_nanos(r[7])), charged_usd=float(from_nanos(r[5] + r[7])),
        )
        for name, r in sorted(sums.items())
    }
    return History(
        workspace_id=workspace_id, by=by, since=first_day, months=months, rows=rows,
        total_cost_usd=float(from_nanos(sum(r[5] + r[7] for r in sums.values()))),
        total_requests=sum(r[0] for r in sums.values()),
    )


def _priced_usd(a: Aggregate) -> float | None:
    """What the priced calls of a breakdown row cost; None when it has unpriced calls and
    nothing priced (a cost that was never known is not $0)."""
    if a.unpriced and not a.cost_nanos:
        return None
    return float(from_nanos(a.cost_nanos))


def _activity(record: UsageRecord) -> Activity:
    return Activity(
        timestamp=_iso(record.timestamp or datetime.now(UTC)),
        model=record.model,
        api_method=record.api_method,
        tokens_used=record.total_tokens,
        success=record.success,
        cost_usd=None if record.cost is None else float(record.cost),
        status_code=record.status_code,
        latency_ms=record.latency_ms,
        estimated=record.estimated,
    )


# ---------------------------------------------------------------------- seed compatibility
_default_manager: QuotaManager | None = None
_default_lock = threading.Lock()


def get_default_manager() -> QuotaManager:
    """The process-wide manager, built from the environment on first use
    (:meth:`QuotaManager.from_env`)."""
    global _default_manager
    manager = _default_manager
    if manager is None:
        with _default_lock:
            if _default_manager is None:
                _default_manager = QuotaManager.from_env()
                close_at_exit(_default_manager, 0)  # alerts sent, records written
            manager = _default_manager
    return manager


def set_default_manager(manager: QuotaManager | None) -> None:
    """Replace the process-wide manager (``None``: build it from the environment again)."""
    global _default_manager
    with _default_lock:
        _default_manager = manager


def __getattr__(name: str) -> Any:
    # The seed's ``quota_manager`` module object, created lazily: nothing happens at import.
    if name == "quota_manager":
        return get_default_manager()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
