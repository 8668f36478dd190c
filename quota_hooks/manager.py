"""`QuotaManager`: the framework-free core every adapter feeds.

A shell over the parts that do the work: :mod:`quota_hooks._core` decides (estimates, plans,
refusals, prices), a store counts (:mod:`quota_hooks.storage`), :mod:`quota_hooks.status`
reports, :mod:`quota_hooks._health` remembers failures inside tracking, and
:mod:`quota_hooks.alerts` and :mod:`quota_hooks.events` tell the world. Its methods come in
four rooms: enforcement before a call (:class:`~quota_hooks._admission.Admission`), the
reads (:class:`~quota_hooks._reads.Reports`), the control plane
(:class:`~quota_hooks.control.Administration`), and here the recording, the health and the
lifecycle. Only the store calls differ between the sync and the async methods. A failure of
tracking never breaks the caller's LLM call: it is logged once per kind and shows as
``degraded``.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import anyio.to_thread

from ._admission import Admission
from ._config import check_arguments, from_environment
from ._core import Core, check_record
from ._health import DEGRADED_SECONDS, Health
from ._reads import Reports
from .alerts.engine import AlertEngine, StoreReader
from .alerts.model import AlertSink, SinkLike
from .context import open_blocks
from .control import POLICY_REFRESH, Administration, ControlPlane, PolicySync
from .errors import ConfigurationError
from .events import Events
from .policy import Policies, QuotaPolicy
from .pricing import PriceBook
from .storage import MemoryStore, Store
from .storage.base import ControlStore, Reservation, UsageEntry, as_async
from .storage.sqlite import RepriceReport
from .typing import AsyncSleeper, Clock, Drainer, Observer, Sleeper, TokenEstimator
from .usage import UsageRecord, estimate_tokens

__all__ = ["DEGRADED_SECONDS", "POLICY_REFRESH", "QuotaManager"]

logger = logging.getLogger("quota_hooks")


class QuotaManager(Admission, Reports, Administration):
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
