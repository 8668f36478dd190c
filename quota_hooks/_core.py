"""The manager's decisions, sans-IO: no store, no locks on the call path, no clock reads.

* :meth:`Core.estimate` turns the facts of a request (model, method, prompt size, requested
  max tokens, images, characters) into an :class:`~quota_hooks.usage.Estimate` in tokens.
* :meth:`Core.plan` turns an estimate into what one ``acquire`` reserves (:class:`Plan`), or
  refuses it at once (an unpriced model under ``unpriced="refuse"``).
* :meth:`Core.outcome` turns a store's answer into a reservation, a wait, or a refusal.
* :meth:`Core.entry` prices a record and works out what it adds to its scopes.

:class:`~quota_hooks.QuotaManager` runs these around its store calls, sync and async alike.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from .errors import ConfigurationError, QuotaExceededError, RateLimitedError
from .metrics import BUDGET, BUDGETS, RATE_METRICS, Metric, budget_of
from .policy import Policies, QuotaPolicy
from .pricing import PriceBook, format_usd, from_nanos, to_nanos
from .storage.base import (
    Counters,
    Denial,
    Limits,
    Reservation,
    UsageDelta,
    UsageEntry,
    budget_scope,
    budget_scope_parts,
    is_budget_scope,
    scope_key,
    workspace_scope,
)
from .usage import (
    MAX_COST,
    MAX_COUNT,
    MAX_SCOPES,
    Estimate,
    UsageRecord,
    bounded,
    estimate_tokens,
    fast_constructor,
)
from .windows import Period, day_key, month_key, period_key

__all__ = ["GENERATING_METHODS", "IMAGE_OUTPUT_TOKENS", "Core", "Plan", "Priced", "limits_of"]

logger = logging.getLogger("quota_hooks")

#: Output tokens an image is assumed to take, for the reservation of an image model billed
#: by tokens (gpt-image-1 at high quality, 1536x1024: 6,208).
IMAGE_OUTPUT_TOKENS = 6_240
#: API methods whose calls generate text: without a requested maximum, their output is
#: assumed to be the policy's ``default_max_tokens``.
GENERATING_METHODS = frozenset({"chat.completions", "completions", "responses"})


#: A day or week budget of one scope: the scope, the period, the zone of its calendar and
#: its limit (``None``: the budget only observes).
PeriodBudget = tuple[str, Period, str, Limits | None]


@dataclass(frozen=True, slots=True)
class Plan:
    """What one ``acquire`` reserves: its scopes, the usage held and each scope's limits,
    and the day and week budgets, whose scopes depend on when the call is reserved."""

    keys: list[str]
    delta: UsageDelta
    limits: dict[str, Limits]
    policies: dict[str, QuotaPolicy]
    periods: tuple[PeriodBudget, ...] = ()

    @property
    def policy(self) -> QuotaPolicy:
        """The workspace's policy (the first scope): its time zone, TTL and fail policy."""
        return self.policies[self.keys[0]]

    def reserve_args(
        self, now: float
    ) -> tuple[list[str], UsageDelta, dict[str, Limits], float, str, float]:
        """The arguments of ``Store.reserve`` at ``now``: the day and week budgets are the
        scopes of ``now``'s day and week, after the others (as :meth:`Core.entry` has them)."""
        policy = self.policy
        keys, limits = self.keys, self.limits
        if self.periods:
            keys, limits = list(keys), dict(limits)
            for scope, period, zone, period_limits in self.periods:
                key = budget_scope(scope, period_key(now, period, zone))
                keys.append(key)
                if period_limits is not None:
                    limits[key] = period_limits
        return (keys, self.delta, limits, now, month_key(now, policy.timezone),
                policy.reservation_ttl)


@dataclass(frozen=True, slots=True)
class Priced:
    """A record's price: ``cost`` is ``None`` when unknown; ``charge`` is what the budget
    counts (nano-dollars), of which ``unpriced`` nano-dollars were charged at the fallback."""

    cost: Decimal | None
    source: str | None
    charge: int
    unpriced: int = 0


# The hot path builds these frozen dataclasses on every call: without the per-field
# ``object.__setattr__`` of their generated ``__init__`` (see ``fast_constructor``).
_new_plan = fast_constructor(Plan)
_new_delta = fast_constructor(UsageDelta)
_new_entry = fast_constructor(UsageEntry)
#: Workspace ids whose scope keys :class:`Core` keeps worked out (then it starts again).
_MAX_SCOPE_KEYS = 4096


def limits_of(policy: QuotaPolicy) -> Limits:
    """The limits of ``policy`` that may refuse a call (``observe`` ones left out): its rate
    limits and its monthly budget (the day and week budgets are :func:`period_budgets`)."""
    enforced = {
        m.name: m.limit(policy) if policy.mode_for(m.name) != "observe" else None
        for m in RATE_METRICS
    }
    return Limits(**enforced, budget_nanos=_budget_nanos(policy, BUDGET.name))  # type: ignore[arg-type]


def _budget_nanos(policy: QuotaPolicy, name: str) -> int | None:
    budget = policy.limit(name)
    if budget is None or policy.mode_for(name) == "observe":
        return None
    return to_nanos(Decimal(budget))


def period_budgets(policy: QuotaPolicy) -> tuple[tuple[Period, Limits | None], ...]:
    """The day and week budgets ``policy`` sets, each with its limits (``None`` when it only
    observes): each is kept in a scope of its own (:func:`~quota_hooks.storage.base.
    budget_scope`)."""
    found: list[tuple[Period, Limits | None]] = []
    for m in BUDGETS[1:]:
        if m.limit(policy) is not None and m.period is not None:
            nanos = _budget_nanos(policy, m.name)
            found.append((m.period, None if nanos is None else Limits(budget_nanos=nanos)))
    return tuple(found)


def budget_reads(scope: str, policy: QuotaPolicy, now: float) -> list[tuple[Metric, str]]:
    """The day and week budgets ``policy`` sets for ``scope``, each with the scope whose
    counters hold what it counts at ``now``."""
    return [(budget_of(period), budget_scope(scope, period_key(now, period, policy.timezone)))
            for period, _ in period_budgets(policy)]


def with_budgets(counters: Counters, reads: Sequence[tuple[Metric, str]],
                 found: Sequence[Counters]) -> Counters:
    """``counters`` with the day and week budgets' charges and resets filled in from their
    scopes' counters (``found``, in the order of ``reads``)."""
    if not reads:
        return counters
    changes: dict[str, Any] = {}
    for (m, _), period in zip(reads, found, strict=True):
        changes[m.counter] = period.cost_month_nanos
        changes[m.reset_field] = period.budget_reset_at
    return replace(counters, **changes)


class Core:
    """Estimates, plans, refusals and pricing for one manager (see the module doc).

    Args:
        policies: the manager's policies.
        prices: the price book.
        token_estimator: prompt tokens of a prompt of this many bytes (or characters).
    """

    def __init__(
        self, policies: Policies, prices: PriceBook, token_estimator: Callable[[int], int]
    ) -> None:
        self.policies = policies
        self.prices = prices
        self.token_estimator = token_estimator
        self._failed_estimator: object = None
        self.denials = 0
        """Calls refused by an enforced limit."""
        self._limits: dict[int, tuple[QuotaPolicy, Limits | None]] = {}
        self._periods: dict[int, tuple[QuotaPolicy, tuple[tuple[Period, Limits | None], ...]]] = {}
        self._cross_checked: set[str] = set()
        self._lock = threading.Lock()
        self._scope_keys: dict[str, str] = {}

    # ------------------------------------------------------------------ before a call
    def estimate(self, workspace_id: str, estimate: Estimate) -> Estimate:
        """``estimate`` with both token counts set.

        Counts given are kept (one left out is 0). Without any, they come from the facts:
        input tokens from the prompt size (``token_estimator``), output tokens from the
        requested ``max_tokens``, else the policy's ``default_max_tokens`` for a method that
        generates text, else 0.
        """
        inputs, outputs = estimate.input_tokens, estimate.output_tokens
        if inputs is not None and outputs is not None:
            return estimate
        if inputs is not None or outputs is not None:
            return replace(estimate, input_tokens=inputs or 0, output_tokens=outputs or 0)
        size = count(estimate.prompt_size)
        inputs = self._prompt_tokens(size) if size else 0
        if estimate.max_tokens is not None:
            outputs = count(estimate.max_tokens)
        elif estimate.api_method in GENERATING_METHODS:
            outputs = self.policies.for_workspace(workspace_id).default_max_tokens
        else:
            outputs = 0
        return replace(estimate, input_tokens=count(inputs), output_tokens=outputs)

    def _prompt_tokens(self, size: int) -> int:
        """The token estimator's count for a prompt of ``size``; one that raises or returns
        no count is logged (once per estimator) and the default's is used: an estimate never
        costs a call its record, nor its reservation."""
        estimator = self.token_estimator
        try:
            tokens = estimator(size)
            if type(tokens) is int and 0 <= tokens <= MAX_COUNT:
                return tokens
            problem = f"returned {tokens!r:.80}, not a count of tokens"
        except Exception as exc:
            problem = f"raised {type(exc).__name__}: {exc}"
        if self._failed_estimator is not estimator:
            self._failed_estimator = estimator
            logger.warning("quota-hooks: the token_estimator %r %s for a prompt of %d; the "
                           "default estimate (estimate_tokens) is used instead", estimator,
                           problem, size)
        return estimate_tokens(size)

    def plan(
        self, workspace_id: str, estimate: Estimate, scopes: Mapping[str, str] | None
    ) -> Plan | None:
        """What ``acquire`` reserves, or None when nothing is enforced.

        Raises:
            ConfigurationError: a wrong argument, naming it.
            QuotaExceededError: an unpriced model under a money budget with
                ``unpriced="refuse"``.
        """
        check_estimate(workspace_id, estimate, scopes)
        policies = self.policies
        policy = policies.for_workspace(workspace_id)
        keys = [self.workspace_scope(workspace_id)]
        by_key = {keys[0]: policy}
        if scopes:
            for kind, value in itertools.islice(scopes.items(), MAX_SCOPES):
                kind, value = bounded(str(kind)), bounded(str(value))
                key = scope_key(kind, value)
                keys.append(key)
                found = policies.for_scope(kind, value)
                if found is not None:
                    by_key[key] = found
        limits = {}
        periods: list[PeriodBudget] = []
        for key, scope_policy in by_key.items():
            enforced = self.enforced_limits(scope_policy)
            if enforced is not None:
                limits[key] = enforced
            budgets = self.period_budgets(scope_policy)
            if budgets:
                periods.extend((key, period, scope_policy.timezone, period_limits)
                               for period, period_limits in budgets)
        if not limits:
            return None
        if estimate.input_tokens is None or estimate.output_tokens is None:
            estimate = self.estimate(workspace_id, estimate)
        inputs, outputs = count(estimate.input_tokens), count(estimate.output_tokens)
        nanos = self._estimate_nanos(estimate, inputs, outputs)
        if nanos is None:  # a model without a price: what the policy says, never free
            if policy.unpriced == "refuse" and (any(
                lim.budget_nanos is not None for lim in limits.values()
            ) or any(budget[3] is not None for budget in periods)):
                self.denials += 1
                named = next((m for m in BUDGETS if m.limit(policy) is not None
                              and policy.mode_for(m.name) != "observe"), BUDGET)
                raise QuotaExceededError(
                    keys[0], named.name, 0.0, float(named.limit(policy) or 0), None,
                    f"{keys[0]}: model {estimate.model!r} has no price, and the policy refuses "
                    f"unpriced calls under a money budget (unpriced='refuse'); the call was not "
                    f"sent. Give it a price (PriceBook.with_overrides, QUOTA_HOOKS_PRICES_FILE) "
                    f"or set unpriced='fallback'",
                )
            nanos = 0 if policy.unpriced == "allow" else to_nanos(self.prices.fallback_cost(
                units_of(estimate, inputs, outputs)))
        delta = _new_delta(  # positional: a keyword call costs twice as much
            0 if estimate.api_method in policy.unmetered_methods else 1,  # requests
            inputs + outputs,  # tokens
            nanos,  # cost_nanos
        )
        if not (delta.requests or delta.tokens or delta.cost_nanos):
            return None
        return _new_plan(keys, delta, limits, by_key, tuple(periods))

    def workspace_scope(self, workspace_id: str) -> str:
        """:func:`~quota_hooks.storage.base.workspace_scope` of ``workspace_id``, kept for the
        last few thousand workspaces (it is worked out on every call)."""
        keys = self._scope_keys
        key = keys.get(workspace_id)
        if key is None:
            key = workspace_scope(workspace_id)
            if len(keys) >= _MAX_SCOPE_KEYS:
                keys.clear()
            keys[workspace_id] = key
        return key

    def enforced_limits(self, policy: QuotaPolicy) -> Limits | None:
        """The limits of ``policy`` that may refuse a call, or None; worked out once per
        policy (policies are frozen), not on every call."""
        cached = self._limits.get(id(policy))
        if cached is None or cached[0] is not policy:
            if len(self._limits) > 1024:
                self._limits.clear()
            cached = (policy, limits_of(policy) if policy.enforced else None)
            self._limits[id(policy)] = cached
        return cached[1]

    def period_budgets(self, policy: QuotaPolicy) -> tuple[tuple[Period, Limits | None], ...]:
        """:func:`period_budgets` of ``policy``, worked out once per policy."""
        cached = self._periods.get(id(policy))
        if cached is None or cached[0] is not policy:
            if len(self._periods) > 1024:
                self._periods.clear()
            cached = (policy, period_budgets(policy))
            self._periods[id(policy)] = cached
        return cached[1]

    def _period_scopes(self, scope: str, policy: QuotaPolicy, at: float) -> list[str]:
        """The day and week budget scopes a call of ``scope`` at ``at`` is charged to."""
        budgets = self.period_budgets(policy)
        if not budgets:
            return []
        return [budget_scope(scope, period_key(at, period, policy.timezone))
                for period, _ in budgets]

    def _estimate_nanos(self, estimate: Estimate, inputs: int, outputs: int) -> int | None:
        """What a call is expected to cost: its tokens, and the images or characters it asks
        for (priced per image, per character, or, for an image model billed by tokens, at
        :data:`IMAGE_OUTPUT_TOKENS` each). None when no price is known."""
        prices = self.prices
        if not (estimate.images or estimate.characters):
            return prices.estimate_nanos(estimate.model, inputs, outputs, estimate.provider)
        rates = prices.rates(estimate.model, estimate.provider)
        if rates is None:
            return None
        if estimate.images and "images" in rates.priced:
            record = UsageRecord(model=estimate.model, provider=estimate.provider or "unknown",
                                 images=count(estimate.images), image_size=estimate.image_size,
                                 image_quality=estimate.image_quality)
        elif estimate.characters and "characters" in rates.priced:
            record = UsageRecord(model=estimate.model, provider=estimate.provider or "unknown",
                                 characters=count(estimate.characters))
        else:
            record = units_of(estimate, inputs, outputs)
        return prices.cost(record).nanos

    def outcome(
        self, result: Reservation | Denial, plan: Plan, waited: float, wait: bool
    ) -> Reservation | float:
        """The reservation, or the seconds to wait before trying again.

        Raises:
            RateLimitedError: a rate limit refused the call.
            QuotaExceededError: the budget refused it.
        """
        if isinstance(result, Reservation):
            return result
        if is_budget_scope(result.scope):  # a day or week budget: named as its scope's
            period, parent = budget_scope_parts(result.scope)
            result = replace(result, scope=parent,
                             limit=budget_of("week" if "W" in period else "day").name)
        policy = plan.policies[result.scope]
        if (
            wait
            and policy.mode_for(result.limit) == "wait"
            and result.retry_after is not None
            and waited + result.retry_after <= policy.max_wait
        ):
            return result.retry_after
        self.denials += 1
        raise refusal(result, policy)

    # ------------------------------------------------------------------ after a call
    def entry(self, record: UsageRecord, reservation: Reservation | None, now: float) -> UsageEntry:
        """Price ``record`` and work out what it adds to its scopes at ``now``.

        A model without a price is charged as the policy's ``unpriced`` says (the fallback
        price by default); its cost stays unknown. A record whose counts could not be trusted
        (``invalid_fields``) settles at least at its ``reservation``'s estimate.
        """
        policy = self.policies.for_workspace(record.workspace_id)
        cost, source, charge, unpriced = self._price(record, policy)
        limited = record.status_code == 429
        tokens = record.total_tokens
        if reservation is not None and record.invalid_fields:
            tokens = max(tokens, reservation.delta.tokens)
            if charge < reservation.delta.cost_nanos:
                unpriced += (reservation.delta.cost_nanos - charge) if cost is None else 0
                charge = reservation.delta.cost_nanos
        delta = _new_delta(  # positional: a keyword call costs twice as much
            0 if record.api_method in policy.unmetered_methods else 1,  # requests
            tokens,
            charge,  # cost_nanos
            1,  # calls
            0 if record.success or limited else 1,  # errors
            1 if limited else 0,  # rate_limited
            unpriced,  # unpriced_nanos
        )
        scopes: tuple[str, ...] = (self.workspace_scope(record.workspace_id),)
        if record.scopes:
            scopes += tuple(scope_key(kind, value) for kind, value in record.scopes.items())
        # The record's own time decides its minute and day (never after now). A reserved
        # call is charged to the budget periods it was admitted in: one reserved before
        # midnight and recorded after it settles in the day (and month) that held it, never
        # unchecked in the next.
        at = now if record.timestamp is None else min(record.timestamp.timestamp(), now)
        zone = policy.timezone
        admitted = at if reservation is None else min(reservation.at, now)
        periods = self._period_scopes(scopes[0], policy, admitted)
        for kind, value in record.scopes.items():
            found = self.policies.for_scope(kind, value)
            if found is not None:
                periods += self._period_scopes(scope_key(kind, value), found, admitted)
        if reservation is not None:  # a budget removed since: its hold is settled too
            periods += [key for key in reservation.scopes
                        if is_budget_scope(key) and key not in periods]
        if periods:
            scopes += tuple(periods)
        return _new_entry(record, scopes, delta, now, month_key(admitted, zone), cost, source,
                          day_key(at, zone), at)

    def price(self, record: UsageRecord, policy: QuotaPolicy) -> Priced:
        """The price of a record: its own cost if it has one, else the price book's; a model
        without a price is charged as ``policy.unpriced`` says."""
        return Priced(*self._price(record, policy))

    def _price(self, record: UsageRecord, policy: QuotaPolicy
               ) -> tuple[Decimal | None, str | None, int, int]:
        """:meth:`price` as a plain tuple (cost, source, charge, unpriced), for the hot path."""
        cost, source = record.cost, record.price_source
        nanos: int | None = None
        if cost is None:
            found = self.prices.cost(record)
            cost, source, nanos = found.usd, found.source, found.nanos
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


def refusal(denial: Denial, policy: QuotaPolicy) -> QuotaExceededError:
    """The error of a refused reservation, naming the scope, the limit and the numbers."""
    budget = next((m for m in BUDGETS if m.name == denial.limit), None)
    if budget is not None:
        used, maximum = from_nanos(denial.used), from_nanos(denial.maximum)
        return QuotaExceededError(
            denial.scope, denial.limit, float(used), float(maximum), None,
            f"{denial.scope}: the {budget.title} of {format_usd(maximum)} has no room for "
            f"this call ({format_usd(used)} spent or held {_THIS[str(budget.period)]}); the "
            f"call was not sent",
        )
    message = (f"{denial.scope}: {denial.limit} limit reached ({denial.used} of "
               f"{denial.maximum} used); the call was not sent")
    if denial.retry_after is not None:
        message += f", retry after {denial.retry_after:.1f}s"
        if policy.mode_for(denial.limit) == "wait":
            message += f" (more than max_wait={policy.max_wait:g}s)"
    return RateLimitedError(
        denial.scope, denial.limit, denial.used, denial.maximum, denial.retry_after, message)


_THIS = {"day": "today", "week": "this week", "month": "this month"}


def units_of(estimate: Estimate, inputs: int, outputs: int) -> UsageRecord:
    """An estimate as token usage: images at :data:`IMAGE_OUTPUT_TOKENS` of output each."""
    images = count(estimate.images)
    return UsageRecord(model=estimate.model, provider=estimate.provider or "unknown",
                       input_tokens=inputs,
                       output_tokens=outputs + images * IMAGE_OUTPUT_TOKENS,
                       images=images, image_size=estimate.image_size,
                       image_quality=estimate.image_quality,
                       characters=count(estimate.characters))


def count(value: object) -> int:
    """An estimate's count, trusted like a record's (see :mod:`quota_hooks.usage`)."""
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    return UsageRecord(input_tokens=value).input_tokens  # type: ignore[arg-type]


def check_record(record: object, reservation: object) -> None:
    """A :class:`ConfigurationError` naming a wrong argument of ``record()``."""
    if not isinstance(record, UsageRecord):
        raise ConfigurationError(
            f"record must be a UsageRecord, got {type(record).__name__}: {record!r:.80}")
    if reservation is not None and not isinstance(reservation, Reservation):
        raise ConfigurationError(
            f"reservation must be the Reservation acquire() returned, or None, got "
            f"{type(reservation).__name__}")


def check_estimate(workspace_id: object, estimate: object, scopes: object) -> None:
    """A :class:`ConfigurationError` naming a wrong argument of ``acquire()``."""
    if not isinstance(workspace_id, str) or not workspace_id:
        raise ConfigurationError(f"workspace_id must be a non-empty string, got {workspace_id!r}")
    if not isinstance(estimate, Estimate):
        raise ConfigurationError(
            f"estimate must be an Estimate, got {type(estimate).__name__}: {estimate!r:.80}")
    if scopes is not None and not isinstance(scopes, Mapping):
        raise ConfigurationError(f"scopes must be a mapping of kind to value, got {scopes!r:.80}")
