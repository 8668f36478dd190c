"""`QuotaManager`: the framework-free core every adapter feeds.

A shell over the parts that do the work: :mod:`quota_hooks._core` decides (estimates, plans,
refusals, prices), a store counts (:mod:`quota_hooks.storage`), :mod:`quota_hooks.status`
reports, :mod:`quota_hooks._health` remembers failures inside tracking, and
:mod:`quota_hooks.alerts` and :mod:`quota_hooks.events` tell the world. Only the store calls
differ between the sync and the async methods. A failure of tracking never breaks the
caller's LLM call: it is logged once per kind and shows as ``degraded``.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import anyio.to_thread

from ._config import check_arguments, from_environment
from ._core import Core, Plan, check_record
from ._flow import Flow, arun, run
from ._health import DEGRADED_SECONDS, Health
from ._reads import aread_history, aread_status, read_history, read_status
from .advice import Advice, advise, mixes_from_breakdown
from .alerts.engine import AlertEngine, StoreReader
from .alerts.model import Alert, AlertKind, AlertSink, SinkLike
from .context import open_blocks
from .control import POLICY_REFRESH, ControlPlane, PolicySync, reading
from .errors import ConfigurationError, QuotaExceededError, StorageError
from .events import Events
from .forecast import Forecast
from .policy import Policies, QuotaPolicy
from .pricing import PriceBook
from .status import Extra, History, StatusReport, WorkspaceTracker, build_status, history_months
from .storage import MemoryStore, Store
from .storage.base import (
    Breakdown,
    ControlStore,
    PolicyTable,
    Reservation,
    UsageEntry,
    as_async,
    workspace_scope,
)
from .storage.sqlite import RepriceReport
from .typing import AsyncSleeper, Clock, Decision, Drainer, Observer, Sleeper, TokenEstimator
from .usage import Estimate, UsageRecord, estimate_tokens
from .windows import month_key

__all__ = ["DEGRADED_SECONDS", "POLICY_REFRESH", "QuotaManager"]

logger = logging.getLogger("quota_hooks")


_MAX_WAIT_ROUNDS = 1000


class QuotaManager:
    """Counts, prices, limits and reports LLM usage per workspace.

    Args:
        policy: the policy of every workspace without its own (``default_policy`` is the same
            argument under another name; give one of them). Defaults to ``QuotaPolicy()``,
            the seed guide's limits.
        policies: per-workspace policies, ``{"ws-a": QuotaPolicy(...)}``.
        scope_policies: policies of other scopes, keyed ``"kind:value"``:
            ``{"team:ml": QuotaPolicy(rpm=50)}``; ``"kind:*"`` is the policy of every scope
            of that kind without its own (``{"user:*": QuotaPolicy(rpd=100)}``).
        store: where usage lives; a :class:`~quota_hooks.storage.MemoryStore` by default.
        prices: the :class:`~quota_hooks.pricing.PriceBook`; ``PriceBook.default()`` by default.
        clock: returns epoch seconds; inject one in tests (``quota_hooks.testing.ManualClock``).
        recent_limit: how many calls ``recent_activity`` shows (the seed's 10).
        sinks: alert sinks (:mod:`quota_hooks.alerts`), or plain sync/async callables.
        alert_queue_size: alerts held per sink before the oldest is dropped.
        sink_timeout: seconds one alert delivery may take, retries included.
        hysteresis_percent: points below a threshold that usage must fall to re-arm it.
        policy_refresh: seconds between two checks of the store's policy table (see below).
        alert_history: alerts kept per workspace in the store (every process's, and across
            restarts: :meth:`alert_history`); 0 keeps none.
        seed_policies: False: the policies given here never seed the store (a viewer or an
            admin tool: ``quota-hooks serve``, ``status`` and ``policy`` use it).

    Policies live in the store too (every built-in store keeps them), so that every process
    sharing it enforces the same ones: ``quota-hooks policy set`` changes them everywhere
    within ``policy_refresh`` seconds. The policies given here seed a store that never held
    any; after that a lookup takes the most specific policy, the store's over the code's at
    equal specificity (:class:`~quota_hooks.policy.Policies`).

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
        policy_refresh: float = POLICY_REFRESH,
        alert_history: int = 100,
        seed_policies: bool = True,
    ) -> None:
        check_arguments(policy=policy, default_policy=default_policy, recent_limit=recent_limit,
                        alert_history=alert_history, sinks=sinks, policy_refresh=policy_refresh)
        self.policies = Policies(policy if policy is not None else default_policy,
                                 policies, scope_policies)
        self.store: Store = store if store is not None else MemoryStore()
        self._astore = as_async(self.store)
        self._control = self.store if isinstance(self.store, ControlStore) else None
        self.alert_history_size = alert_history
        self.prices: PriceBook = prices if prices is not None else PriceBook.default()
        self.clock: Clock = clock if clock is not None else time.time
        self._sync = PolicySync(self.policies, self._control, self._astore, self.now,
                                float(policy_refresh), seed=seed_policies,
                                on_seeded=lambda docs, version: self._admin.seeded(docs, version))
        self.recent_limit = recent_limit
        self.sleep: Sleeper = time.sleep
        """How ``acquire`` waits (a test injects ``ManualClock.sleep``)."""
        self.asleep: AsyncSleeper = anyio.sleep
        """How ``aacquire`` waits (a test injects ``ManualClock.asleep``)."""
        self.core = Core(self.policies, self.prices, estimate_tokens)
        self.health = Health()
        self.fail_open_calls = 0
        """Calls let through without a reservation because the store failed (fail_open)."""
        self.events = Events()
        """Live changes and alerts for listeners (the WebSocket, ``quota-hooks demo``)."""
        self.alerts = AlertEngine(
            StoreReader(self._astore, self.policies.for_workspace, self.clock,
                        alert_history if self._control is not None else 0), sinks or (),
            queue_size=alert_queue_size, sink_timeout=sink_timeout,
            hysteresis_percent=hysteresis_percent, listeners=self.events)
        """The alert engine: it evaluates only while a sink or a live listener wants alerts."""
        self._drainers: weakref.WeakSet[Drainer] = weakref.WeakSet()
        self._drainers.add(self.alerts)
        self._observers: tuple[Observer, ...] = ()
        self._admin = ControlPlane(self._sync, self._control, self._astore, self.now,
                                   self.alerts.publish, self.events.changed, alert_history)
        self._sync.start()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> QuotaManager:
        """A manager configured from the environment: the seed's ``OPENAI_*`` limits
        (:meth:`QuotaPolicy.from_env`), ``QUOTA_HOOKS_STORE`` (a store URL), and alert sinks
        from ``QUOTA_HOOKS_WEBHOOK_URL`` (with ``QUOTA_HOOKS_WEBHOOK_SECRET``) and
        ``QUOTA_HOOKS_SLACK_WEBHOOK_URL``. A bad value raises :class:`ConfigurationError`
        naming the variable."""
        return cls(**from_environment(os.environ if environ is None else environ, kwargs))

    def __repr__(self) -> str:
        return f"QuotaManager(store={self.store!r}, policies={len(self.policies)})"

    # ------------------------------------------------------------------ policy and counters
    @property
    def default_policy(self) -> QuotaPolicy:
        """The policy of every workspace without its own."""
        return self.policies.default

    def policy_for(self, workspace_id: str) -> QuotaPolicy:
        """The policy that applies to ``workspace_id``."""
        return self.policies.for_workspace(workspace_id)

    def set_policy(self, workspace_id: str, policy: QuotaPolicy | None) -> None:
        """Give ``workspace_id`` its own policy (``None`` returns it to the default), in the
        store too, so that every process sharing it enforces it.

        Raises:
            StorageError: the store failed (nothing changed).
        """
        if policy is not None and not isinstance(policy, QuotaPolicy):
            raise ConfigurationError(
                f"policy must be a QuotaPolicy or None, got {type(policy).__name__}")
        if self._control is not None:  # the store's only: a code copy would outlive a delete
            self.put_policies({f"workspace:{workspace_id}": policy})
        else:
            self.policies.set(workspace_id, policy)

    def put_policies(self, changes: Mapping[str, QuotaPolicy | None], *,
                     by: str = "manager") -> int:
        """Store policies for every process sharing the store, keyed ``"workspace:<id>"`` (or
        the id), ``"kind:value"``, ``"kind:*"`` or ``"*"`` (``None`` deletes one), in one new
        table version, which it returns. Each change is kept in the alert history (``by``
        says who made it). Raises :class:`StorageError` when the store fails and
        :class:`ConfigurationError` when it keeps no policies."""
        return self._admin.put(changes, by)

    def update_policy(self, name: str, fields: Mapping[str, Any], *, by: str = "manager",
                      names: Mapping[str, str] | None = None) -> tuple[int, QuotaPolicy]:
        """Change some ``fields`` of the stored policy of ``name`` (a workspace id,
        ``"team:ml"``, ``"user:*"`` or ``"*"``); the others keep their value (its stored
        policy, else :func:`~quota_hooks.control.base_policy`). A change another process made
        meanwhile is kept, never overwritten. Returns the new version and the policy; the
        change is kept in the alert history. Raises :class:`ConfigurationError` for a bad
        field (named as ``names`` says), :class:`StorageError` when the store fails."""
        return self._admin.update(name, fields, by, names)

    def reset_usage(self, name: str, *, by: str = "manager", period: str = "month") -> Decimal:
        """Start the budget ``period`` (``"month"``, ``"week"`` or ``"day"``) of a workspace
        (``"acme"``) or scope (``"team:ml"``) again: what it was charged in the period no
        longer counts against that budget (calls still pending do; the breakdowns and the
        history keep everything), and its budget alerts fire again. The reset is kept in the
        alert history (``usage_reset``, with ``by``) and sent to the sinks. Returns the USD
        taken off. Raises :class:`StorageError` when the store fails,
        :class:`ConfigurationError` for ``"*"``, a name with no usage in the period, a day
        or week budget the policy does not set, or a store that keeps no control plane."""
        return self._admin.reset(name, by, period)

    def note_admin_action(self, kind: AlertKind, key: str, message: str, *,
                          publish: bool = True) -> Alert:
        """Keep an admin's change (a policy set or deleted, a usage reset) in the alert
        history of the scope it touched (``key``: ``"workspace:<id>"``, ``"team:ml"``, ``"*"``)
        and send it to the sinks and live listeners, so that no change is silent. Raises
        :class:`StorageError` when the history cannot be written."""
        return self._admin.note(kind, key, message, publish=publish)

    def alert_history(self, workspace_id: str, n: int = 50) -> list[Alert]:
        """The last ``n`` alerts of ``workspace_id`` kept in the store (every process's,
        across restarts; policy changes and resets included), newest first. Raises
        :class:`StorageError` if the store fails."""
        return self._admin.history_of(f"workspace:{workspace_id}", n)

    async def aalert_history(self, workspace_id: str, n: int = 50) -> list[Alert]:
        """Async :meth:`alert_history`."""
        return await self._admin.ahistory_of(f"workspace:{workspace_id}", n)

    def history_of(self, key: str, n: int = 50) -> list[Alert]:
        """:meth:`alert_history` of a store key: ``"workspace:<id>"``, a scope
        (``"team:ml"``: its policy changes and resets) or ``"*"`` (the default's)."""
        return self._admin.history_of(key, n)

    def stored_policies(self) -> PolicyTable:
        """The store's policy table, read now. Raises :class:`StorageError` when the store
        fails and :class:`ConfigurationError` when it keeps no policies."""
        return self._admin.table()

    def policy_source(self, workspace_id: str) -> dict[str, Any]:
        """Where the policy of ``workspace_id`` comes from: ``{"source": "store" | "code",
        "key": "workspace:<id>" | "*", "version": <table version, stored only>}``."""
        source, key = self.policies.source(workspace_id)
        found: dict[str, Any] = {"source": source, "key": key}
        if source == "store":
            found["version"] = self.policies.stored_version(key)
        return found

    def refresh_policies(self) -> None:
        """Read the store's policy table now if it changed (it is read every
        ``policy_refresh`` seconds anyway). Never raises."""
        self._sync.read()

    async def arefresh_policies(self) -> None:
        """Async :meth:`refresh_policies`."""
        await self._sync.aread()

    def now(self) -> float:
        """The manager's clock, in epoch seconds."""
        return self.clock()

    @property
    def token_estimator(self) -> TokenEstimator:
        """Prompt tokens of a prompt of a given size, for reservations
        (:func:`~quota_hooks.usage.estimate_tokens`: 4 bytes a token)."""
        return self.core.token_estimator

    @token_estimator.setter
    def token_estimator(self, estimator: TokenEstimator) -> None:
        if not callable(estimator):
            raise ConfigurationError(f"token_estimator must be callable, got {estimator!r}")
        self.core.token_estimator = estimator

    @property
    def denials(self) -> int:
        """Calls refused by an enforced limit."""
        return self.core.denials

    @property
    def tracking_errors(self) -> int:
        """How many failures inside tracking were caught (never raised into a call)."""
        return self.health.errors

    # ------------------------------------------------------------------ enforcement
    def estimate(self, workspace_id: str, estimate: Estimate) -> Estimate:
        """``estimate`` with its tokens worked out from the facts of the request (prompt
        size, requested ``max_tokens``, the policy's ``default_max_tokens``)."""
        return self.core.estimate(workspace_id, estimate)

    def acquire(self, workspace_id: str, estimate: Estimate, *,
                scopes: Mapping[str, str] | None = None, wait: bool = True) -> Reservation | None:
        """Reserve ``estimate`` against every enforced limit of the workspace and its
        ``scopes``, atomically, before a call is sent. Pass the result to :meth:`record`.

        Returns ``None`` when nothing is enforced (or the store failed and ``fail_open``).
        Raises :class:`RateLimitedError` (rpm, rpd, tpm, tpd) or :class:`QuotaExceededError`
        (the budget) for a limit in ``raise`` mode, or in ``wait`` mode once ``max_wait``
        would be exceeded; :class:`StorageError` when the store fails and not ``fail_open``.
        ``wait=False`` treats ``wait`` limits as ``raise`` (for callers that must not block).
        """
        return run(self._admission(workspace_id, estimate, scopes, wait), self._step)

    async def aacquire(self, workspace_id: str, estimate: Estimate, *,
                       scopes: Mapping[str, str] | None = None,
                       wait: bool = True) -> Reservation | None:
        """Async :meth:`acquire`: waits with ``await``, never blocks the event loop."""
        return await arun(self._admission(workspace_id, estimate, scopes, wait), self._astep)

    def _step(self, step: tuple[str, Any]) -> Any:
        kind, value = step
        return self.sleep(value) if kind == "sleep" else self.store.reserve(*value)

    async def _astep(self, step: tuple[str, Any]) -> Any:
        kind, value = step
        return await (self.asleep(value) if kind == "sleep" else self._astore.areserve(*value))

    def _admission(self, workspace_id: str, estimate: Estimate,
                   scopes: Mapping[str, str] | None, wait: bool
                   ) -> Flow[tuple[str, Any], Reservation | None]:
        """What :meth:`acquire` and :meth:`aacquire` decide, written once: it yields
        ``("reserve", arguments)`` for the store's reserve (sent its result, or thrown its
        error) and ``("sleep", seconds)`` for a ``wait`` limit, and returns the reservation."""
        self._sync.before_call()
        try:
            plan = self.core.plan(workspace_id, estimate, scopes)
            if plan is None:
                return None
            waited = 0.0
            for _ in range(_MAX_WAIT_ROUNDS):
                try:
                    result = yield "reserve", plan.reserve_args(self.clock())
                except Exception as exc:
                    self._store_failed(workspace_id, plan, exc)  # raises unless fail_open
                    return None
                outcome = self.core.outcome(result, plan, waited, wait)
                if isinstance(outcome, Reservation):
                    self._decided(workspace_id, estimate, outcome, waited)
                    return outcome
                yield "sleep", outcome
                waited += outcome
        except (QuotaExceededError, StorageError) as exc:
            self._decided(workspace_id, estimate, exc)
            raise
        raise RuntimeError(f"acquire for {workspace_id!r} did not settle in {_MAX_WAIT_ROUNDS} "
                           "waits")

    def _decided(self, workspace_id: str, estimate: Estimate,
                 outcome: Reservation | BaseException, waited: float = 0.0) -> None:
        """Tell the observers what ``acquire`` decided (a reservation, or the refusal)."""
        if not self._observers:
            return
        decision: Decision
        if isinstance(outcome, Reservation):
            decision, limit, held = ("waited" if waited else "admitted"), None, outcome
        else:
            decision, held = "refused", None
            limit = outcome.limit if isinstance(outcome, QuotaExceededError) else None
        for observer in self._observers:
            try:
                observer.decided(workspace_id, estimate, decision, limit, held)
            except Exception as exc:
                self.note_tracking_failure("observer", exc, workspace_id)

    def release(self, reservation: Reservation | None) -> None:
        """Give a reservation back: the call was never made (it failed before the provider
        saw it). Never raises."""
        if reservation is not None:
            try:
                self.store.release(reservation, self.clock())
            except Exception as exc:
                self.note_tracking_failure("release", exc)

    async def arelease(self, reservation: Reservation | None) -> None:
        """Async :meth:`release`."""
        if reservation is not None:
            try:
                await self._astore.arelease(reservation, self.clock())
            except Exception as exc:
                self.note_tracking_failure("release", exc)

    def _store_failed(self, workspace_id: str, plan: Plan, exc: BaseException) -> None:
        """A store failure during ``acquire``: the call goes on (``fail_open``: no
        reservation, counted) or is refused with :class:`StorageError`."""
        self.note_tracking_failure("acquire", exc, workspace_id)
        if plan.policy.fail_open:
            self.fail_open_calls += 1
            return
        self.core.denials += 1
        raise StorageError(
            f"workspace {workspace_id!r}: the call was refused because the usage store failed "
            f"and fail_open=False: {exc}") from exc

    # ------------------------------------------------------------------ recording
    def prepare(self, record: UsageRecord, reservation: Reservation | None = None) -> UsageEntry:
        """Price ``record`` and compute what it adds to its scopes now. Pure: no I/O."""
        return self.core.entry(record, reservation, self.clock())

    def record(self, record: UsageRecord, reservation: Reservation | None = None) -> None:
        """Count one call (and settle its ``reservation``, if it had one).

        Never raises on a failure inside tracking: it is logged, counted and shown as
        ``degraded``. A wrong argument (not a :class:`UsageRecord`) is a
        :class:`ConfigurationError` naming it.
        """
        check_record(record, reservation)
        self._sync.before_call()
        try:
            entry = self.core.entry(record, reservation, self.clock())
            self.store.commit(entry, reservation)
        except Exception as exc:
            self.note_tracking_failure("record", exc, record.workspace_id)
            return
        self._recorded(entry, reservation)

    async def arecord(self, record: UsageRecord, reservation: Reservation | None = None) -> None:
        """Async :meth:`record`: never blocks the event loop, never raises on a failure
        inside tracking."""
        check_record(record, reservation)
        self._sync.before_call()
        try:
            entry = self.core.entry(record, reservation, self.clock())
            await self._astore.acommit(entry, reservation)
        except Exception as exc:
            self.note_tracking_failure("record", exc, record.workspace_id)
            return
        self._recorded(entry, reservation)

    def _recorded(self, entry: UsageEntry, reservation: Reservation | None) -> None:
        for block in open_blocks():  # quota_hooks.track(): no store read
            if block.manager is None or block.manager is self:
                block.add(entry.record, entry.cost)
        workspace_id = entry.record.workspace_id
        self.alerts.notify(workspace_id, rate_limited=entry.record.status_code == 429)
        self.events.changed(workspace_id)
        for observer in self._observers:
            try:
                observer.recorded(entry, reservation)
            except Exception as exc:
                self.note_tracking_failure("observer", exc, workspace_id)

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` of every call recorded and every ``acquire`` decision from now
        on (:class:`~quota_hooks.typing.Observer`; :func:`quota_hooks.otel.instrument` adds
        one). Adding one twice is a :class:`ConfigurationError`."""
        if observer in self._observers:
            raise ConfigurationError(f"observer {observer!r} is already added")
        self._observers += (observer,)

    def remove_observer(self, observer: Observer) -> None:
        """Stop telling ``observer``; one that was never added is ignored."""
        self._observers = tuple(o for o in self._observers if o is not observer)

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

        def price(record: UsageRecord) -> tuple[Any, str | None, int, int]:
            p = self.core.price(record, self.policies.for_workspace(record.workspace_id))
            return p.cost, p.source, p.charge, p.unpriced

        report: RepriceReport = reprice(since, price, dry_run=dry_run)
        return report

    # ------------------------------------------------------------------ health
    def note_tracking_failure(self, kind: str, exc: BaseException,
                              workspace_id: str | None = None) -> None:
        """Count a failure inside tracking: logged once per ``kind``, ``degraded`` for
        :data:`DEGRADED_SECONDS`. Adapters call this instead of letting a tracking error reach
        the user's call."""
        self.health.failed(kind, exc, workspace_id, self.clock())
        self.alerts.note_degraded(workspace_id)

    def note_provider_limits(self, workspace_id: str, provider: str,
                             headers: Mapping[str, str]) -> None:
        """Keep the provider's latest ``x-ratelimit-*`` headers for the status report
        (``provider_limits[provider] = {"remaining_requests": "499", ...}``)."""
        self.health.note_limits(workspace_id, provider, headers)

    # ------------------------------------------------------------------ status
    def status(self, workspace_id: str, *, enhanced: bool = True,
               recent: int | None = None) -> StatusReport:
        """The status of ``workspace_id`` now. Raises :class:`StorageError` if the store fails."""
        self._sync.before_call()
        now, policy, scope, _ = self._where(workspace_id)
        with reading("status", workspace_id):
            counters, extra, forecast = read_status(
                self.store, scope, policy, now,
                recent=(self.recent_limit if recent is None else recent) if enhanced else None)
        return self._report(workspace_id, policy, now, counters, extra, forecast)

    async def astatus(self, workspace_id: str, *, enhanced: bool = True,
                      recent: int | None = None) -> StatusReport:
        """Async :meth:`status`."""
        self._sync.before_call()
        now, policy, scope, _ = self._where(workspace_id)
        with reading("status", workspace_id):
            counters, extra, forecast = await aread_status(
                self._astore, scope, policy, now,
                recent=(self.recent_limit if recent is None else recent) if enhanced else None)
        return self._report(workspace_id, policy, now, counters, extra, forecast)

    def _where(self, workspace_id: str) -> tuple[float, QuotaPolicy, str, str]:
        now = self.clock()
        policy = self.policies.for_workspace(workspace_id)
        return now, policy, workspace_scope(workspace_id), month_key(now, policy.timezone)

    def _report(self, workspace_id: str, policy: QuotaPolicy, now: float, counters: Any,
                extra: Extra | None, forecast: Forecast | None = None) -> StatusReport:
        return build_status(workspace_id, policy, now, counters, extra, forecast=forecast,
                            degraded=self.health.degraded(workspace_id, now, self.store),
                            provider_limits=self.health.provider_limits(workspace_id),
                            policy_source=self.policy_source(workspace_id))

    def workspaces(self) -> list[str]:
        """Every workspace with recorded usage, sorted."""
        return self.store.workspaces()

    async def aworkspaces(self) -> list[str]:
        """Async :meth:`workspaces`."""
        return await self._astore.aworkspaces()

    def history(self, workspace_id: str, *, since: float | None = None,
                by: Breakdown = "day") -> History:
        """Usage of ``workspace_id`` since ``since`` (epoch seconds; 30 days ago by default),
        per calendar day, model or API method. Reads the month totals, never the history.

        Per day the range is exact; per model or method it is counted in whole budget months
        (the months that ``since`` and now fall in, and those between).
        """
        self._sync.before_call()
        now, policy, scope, _ = self._where(workspace_id)
        span = history_months(now, since, policy.timezone)  # a bad ``since``: a ValueError
        with reading("history", workspace_id):
            return read_history(self.store, scope, workspace_id, span, by)

    async def ahistory(self, workspace_id: str, *, since: float | None = None,
                       by: Breakdown = "day") -> History:
        """Async :meth:`history`."""
        self._sync.before_call()
        now, policy, scope, _ = self._where(workspace_id)
        span = history_months(now, since, policy.timezone)
        with reading("history", workspace_id):
            return await aread_history(self._astore, scope, workspace_id, span, by)

    def advise(self, workspace_id: str, *, provider: str | None = None,
               capabilities: Mapping[str, Iterable[str]] | None = None) -> Advice:
        """Cheaper-model advice: this budget month's token mix of each model the workspace
        used (input, cached, cache-write, output, reasoning), repriced on the other models of
        its provider that genai-prices bills for the same kinds of units, side by side with
        the saving (:mod:`quota_hooks.advice`). Arithmetic on real usage: it says nothing
        about quality. Raises :class:`StorageError` if the store fails."""
        self._sync.before_call()
        now, _, scope, month = self._where(workspace_id)
        with reading("usage", workspace_id):
            models = self.store.breakdown(scope, month, "model")
        return advise(mixes_from_breakdown(models), self.prices, provider=provider,
                      when=datetime.fromtimestamp(now, UTC), capabilities=capabilities)

    def get_tracker(self, workspace_id: str) -> WorkspaceTracker:
        """The seed guide's per-workspace view: ``get_status_data()`` and friends."""
        return WorkspaceTracker(self, workspace_id)

    # ------------------------------------------------------------------ alerts
    def add_sink(self, sink: SinkLike) -> AlertSink:
        """Send alerts to ``sink`` too (an :class:`~quota_hooks.alerts.AlertSink`, or any sync
        or async callable taking an :class:`~quota_hooks.alerts.Alert`)."""
        return self.alerts.add_sink(sink)

    def publish_alerts(self) -> None:
        """Kept for compatibility: every alert sent reaches :attr:`events` listeners anyway."""

    # ------------------------------------------------------------------ background work
    def add_drainer(self, drainer: Drainer) -> None:
        """Register background work for :meth:`drain` to wait on (held weakly)."""
        self._drainers.add(drainer)

    def drain(self, timeout: float = 5.0) -> bool:
        """Block until every call already made has been recorded (LiteLLM, for one, records
        after the call returns) and every alert delivered. False if ``timeout`` seconds were
        not enough."""
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
        self._sync.close()
        self.alerts.close(timeout)
        self.store.close(timeout=max(0.05, timeout - (time.monotonic() - started)))

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        self._sync.close()
        await self.alerts.adrain()
        await anyio.to_thread.run_sync(self.alerts.close)
        await self._astore.aclose()

    def __enter__(self) -> QuotaManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> QuotaManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def __getattr__(name: str) -> Any:
    # The seed's names, kept here for old imports (``from quota_hooks.manager import
    # quota_manager``); they live in quota_hooks.compat.
    if name in ("quota_manager", "get_default_manager", "set_default_manager"):
        from . import compat

        return getattr(compat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
