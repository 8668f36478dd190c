"""The alert engine: turns usage into alerts, once per crossing, and delivers them off the hot
path.

How it works:

* ``record()`` only marks the workspace as changed (a dict insert) and wakes the background
  thread of :mod:`quota_hooks.alerts._dispatch`. Nothing else happens on the caller's path, and
  nothing at all while no sink and no live listener wants alerts.
* That thread reads the workspace's counters through a narrow :class:`UsageReader` (counters,
  policy, clock and claims: never the manager), runs each metric's state machine
  (:mod:`quota_hooks.alerts.rules`) and claims each new alert's ``dedupe_key`` in the store (so
  several processes sharing a store send it once).
* Each sink has its own bounded queue and delivery task; live listeners (the WebSocket) get
  every alert sent too.

A 429 from the provider sends ``rate_limited`` and a failure inside tracking sends ``degraded``.
Across processes, an alert is claimed in the store for a while: an alert of one kind for one
metric goes out at most once per minute for per-minute limits, once per hour for per-day
limits, once per month for the budget (:data:`~quota_hooks.metrics.METRICS`), once per minute
for ``rate_limited`` and once per five minutes for ``degraded``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol, cast

from .._fork import renew_after_fork
from .._reads import aread_counters
from ..errors import ConfigurationError
from ..forecast import SpendForecast, daily_charges, forecast_spend, months_needed
from ..metrics import BUDGET, BUDGETS, METRICS, Metric, percent_of
from ..policy import QuotaPolicy
from ..pricing import format_usd, from_nanos, to_nanos
from ..storage.base import AsyncControlStore, AsyncStore, Counters, workspace_scope
from ..windows import month_key, period_key
from ._dispatch import Dispatcher
from .model import Alert, AlertKind, AlertSink, SinkLike
from .rules import Thresholds, step

__all__ = ["AlertEngine", "AlertListeners", "StoreReader", "UsageReader"]

logger = logging.getLogger("quota_hooks.alerts")

#: Seconds between two forecasts of a workspace's budget (each reads its day breakdowns).
FORECAST_EVERY = 60.0
#: Complete days of history a budget forecast needs before it may send ``projected`` (a
#: first day's rate is extrapolated from a few hours).
PROJECTED_HISTORY_DAYS = 1

#: How long an event alert stays claimed across processes.
EVENT_CLAIM_SECONDS = {AlertKind.RATE_LIMITED: 60.0, AlertKind.DEGRADED: 300.0}


@dataclass(frozen=True, slots=True)
class Usage:
    """What the engine reads of one workspace: its policy, budget period and counters."""

    policy: QuotaPolicy
    month: str
    counters: Counters
    now: float
    """When the counters were read (the day and week an alert is sent once in)."""


class UsageReader(Protocol):
    """All the alert engine reads: the clock, a workspace's usage, and claims."""

    def now(self) -> float:
        """Epoch seconds."""
        ...

    async def usage(self, workspace_id: str, now: float) -> Usage:
        """The workspace's policy, its budget month at ``now`` and its counters."""
        ...

    async def claim(self, key: str, now: float, ttl: float) -> bool:
        """Take ``key`` for ``ttl`` seconds, once among every process sharing the store."""
        ...

    async def spend_forecast(self, workspace_id: str, usage: Usage, now: float,
                             metric: Metric = BUDGET) -> SpendForecast | None:
        """The projected spend of the workspace's budget ``metric`` in its period (None: the
        policy sets no such budget)."""
        ...

    @property
    def keeps_history(self) -> bool:
        """True when :meth:`keep` keeps alerts (in the store's alert history)."""
        ...

    async def keep(self, alert: Alert, now: float) -> None:
        """Add a sent alert to its workspace's alert history."""
        ...


class AlertListeners(Protocol):
    """Live listeners of sent alerts (:class:`quota_hooks.events.Events`)."""

    @property
    def listeners(self) -> int:
        """How many are listening."""
        ...

    def alert(self, alert: Alert) -> None:
        """Pass on a sent alert."""
        ...


def _period(usage: Usage, metric: Metric = BUDGET) -> str:
    """The budget period an alert about ``metric`` is sent once in: its day, week or month,
    and since when, if its budget was reset (a reset budget alerts again)."""
    reset_at: float = getattr(usage.counters, metric.reset_field)
    name = usage.month if metric.period in (None, "month") else period_key(
        usage.now, metric.period, usage.policy.timezone)
    return f"{name}@{reset_at:.0f}" if reset_at else name


class StoreReader:
    """A :class:`UsageReader` over a store's async face, a policy lookup and a clock; it keeps
    the last ``history`` alerts of each workspace when the store keeps an alert history."""

    __slots__ = ("_clock", "_history", "_policy_for", "_store")

    def __init__(
        self,
        store: AsyncStore,
        policy_for: Callable[[str], QuotaPolicy],
        clock: Callable[[], float],
        history: int = 0,
    ) -> None:
        self._store = store
        self._policy_for = policy_for
        self._clock = clock
        self._history = history if hasattr(store, "aappend_alert") else 0

    @property
    def keeps_history(self) -> bool:
        return self._history > 0

    async def keep(self, alert: Alert, now: float) -> None:
        if self._history > 0:
            await cast(AsyncControlStore, self._store).aappend_alert(
                alert.scope, alert.model_dump_json(), now, self._history)

    def now(self) -> float:
        return self._clock()

    async def usage(self, workspace_id: str, now: float) -> Usage:
        policy = self._policy_for(workspace_id)
        month = month_key(now, policy.timezone)
        counters = await aread_counters(self._store, workspace_scope(workspace_id), policy, now)
        return Usage(policy, month, counters, now)

    async def claim(self, key: str, now: float, ttl: float) -> bool:
        return await self._store.aclaim(key, now, ttl)

    async def spend_forecast(self, workspace_id: str, usage: Usage, now: float,
                             metric: Metric = BUDGET) -> SpendForecast | None:
        budget = metric.limit(usage.policy)
        if budget is None or metric.period is None:
            return None
        zone = usage.policy.timezone
        scope = workspace_scope(workspace_id)
        days = [await self._store.abreakdown(scope, month, "day")
                for month in months_needed(now, metric.period, zone)]
        return forecast_spend(now, metric.period, zone, daily_charges(*days),
                              to_nanos(Decimal(budget)),
                              spent_nanos=getattr(usage.counters, metric.counter))


class AlertEngine:
    """Evaluates workspaces and delivers alerts to sinks and live listeners.

    Every :class:`~quota_hooks.QuotaManager` has one (``manager.alerts``); use
    ``manager.add_sink()`` and ``manager.drain()`` rather than this class directly.

    Args:
        reader: what the engine reads (a :class:`StoreReader`).
        sinks: alert sinks, or plain sync/async callables.
        queue_size: alerts held per sink before the oldest is dropped.
        sink_timeout: seconds one ``send`` may take (retries included).
        hysteresis_percent: points below a threshold that usage must fall to re-arm it.
        listeners: live listeners that get every alert sent too; while they have none and
            there is no sink, nothing is evaluated.
    """

    def __init__(
        self,
        reader: UsageReader,
        sinks: Iterable[SinkLike] = (),
        *,
        queue_size: int = 1000,
        sink_timeout: float = 30.0,
        hysteresis_percent: float = 5.0,
        listeners: AlertListeners | None = None,
    ) -> None:
        for name, value, low in [
            ("queue_size", queue_size, 1),
            ("sink_timeout", sink_timeout, 0),
            ("hysteresis_percent", hysteresis_percent, 0),
        ]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ConfigurationError(f"{name} must be a number >= {low}, got {value!r}")
        if isinstance(queue_size, float):
            raise ConfigurationError(f"queue_size must be a whole number, got {queue_size!r}")
        self.reader = reader
        self.hysteresis = Decimal(str(hysteresis_percent))
        self._listeners = listeners
        self._dirty: dict[str, None] = {}
        # Events coalesce per (workspace, kind): a store outage or a burst of 429s is one
        # claim per evaluation round, not one per failed call.
        self._events: dict[tuple[str, AlertKind], None] = {}
        self._local_claims: dict[str, float] = {}
        # Per (workspace, metric): the highest threshold sent (a percentage, not a position in
        # the list: a policy whose thresholds change keeps what was sent) and its period.
        self._armed: dict[tuple[str, str], tuple[Decimal, str]] = {}
        self._published: list[Alert] = []
        self._forecast_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._dispatch = Dispatcher(self._evaluate_pending, self._has_pending,
                                    queue_size=queue_size, sink_timeout=float(sink_timeout))
        renew_after_fork(self)
        self.suppressed = 0
        """Alerts another process had already claimed (or this one, when the store was down)."""
        self.evaluation_errors = 0
        """Workspaces whose evaluation failed (logged; the next change evaluates them again)."""
        self.history_errors = 0
        """Alerts sent but not kept in the alert history because the store failed (logged)."""
        for sink in sinks:
            self.add_sink(sink)

    def _after_fork_in_child(self) -> None:
        """A child process after ``fork()``: a new lock and alert thread; what the parent
        had pending is the parent's to evaluate and send."""
        self._lock = threading.Lock()
        self._dirty, self._events, self._published = {}, {}, []
        self._dispatch.after_fork_in_child()

    # ------------------------------------------------------------------ sinks and counters
    @property
    def sinks(self) -> list[AlertSink]:
        """The sinks, in the order they were added."""
        return self._dispatch.sinks

    def add_sink(self, sink: SinkLike) -> AlertSink:
        """Add a sink (an :class:`AlertSink` or a callable); returns it as an AlertSink."""
        return self._dispatch.add_sink(sink)

    @property
    def active(self) -> bool:
        """True when someone wants alerts: a sink, or a live listener."""
        listeners = self._listeners
        return (self._dispatch.has_sinks or self.reader.keeps_history
                or (listeners is not None and listeners.listeners > 0))

    @property
    def sent(self) -> int:
        """Alerts delivered, counted per sink."""
        return self._dispatch.sent

    @property
    def failed(self) -> int:
        """Deliveries that raised or timed out, counted per sink."""
        return self._dispatch.failed

    @property
    def dropped(self) -> int:
        """Alerts dropped because a sink's queue was full."""
        return self._dispatch.dropped

    @property
    def lost(self) -> int:
        """Alerts still queued when the engine closed (at exit: not sent in time), logged."""
        return self._dispatch.lost

    # ------------------------------------------------------------------ hot path
    def notify(self, workspace_id: str, *, rate_limited: bool = False) -> None:
        """Note that ``workspace_id`` has new usage. Cheap, thread-safe, never blocks."""
        if not rate_limited and workspace_id in self._dirty:
            # The usual case on a busy path: the workspace already waits for an evaluation,
            # which reads its usage after this call's (the call was committed before this).
            return
        if self._dispatch.closing or not self.active:
            return
        with self._lock:
            self._dirty[workspace_id] = None
            if rate_limited:
                self._events[(workspace_id, AlertKind.RATE_LIMITED)] = None
        self._dispatch.kick()

    def note_degraded(self, workspace_id: str | None) -> None:
        """Note a failure inside tracking (sends ``degraded``)."""
        if self._dispatch.closing or not self.active:
            return
        with self._lock:
            self._events[(workspace_id or "*", AlertKind.DEGRADED)] = None
        self._dispatch.kick()

    def publish(self, alert: Alert) -> None:
        """Send ``alert`` (already kept in the history, or not to be) to the sinks and live
        listeners. Thread-safe, never blocks."""
        if self._dispatch.closing:
            return
        with self._lock:
            self._published.append(alert)
        self._dispatch.kick()

    def _has_pending(self) -> bool:
        return bool(self._dirty or self._events or self._published)

    # ------------------------------------------------------------------ waiting
    def idle(self) -> bool:
        """True when every noted change has been evaluated and every alert delivered."""
        return self._dispatch.idle()

    def drain(self, timeout: float = 5.0) -> bool:
        """Block until :meth:`idle` (False on timeout)."""
        return self._dispatch.drain(timeout)

    async def adrain(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - mirrors drain()
        """Async :meth:`drain`."""
        return await self._dispatch.adrain(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop the thread; alerts
        not delivered by then are logged as lost and counted in :attr:`lost`."""
        if self._dispatch.running:
            self._dispatch.close(timeout)
            with self._lock:  # noted after the final drain: nothing is left to evaluate them
                self._dirty.clear()
                self._events.clear()

    # ------------------------------------------------------------------ evaluation
    async def _evaluate_pending(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            events, self._events = self._events, {}
            published, self._published = self._published, []
        for alert in published:
            self._send(alert)
        now = self.reader.now()
        for workspace_id, kind in events:
            alert = self._event_alert(workspace_id, kind, now)
            await self._claim_and_send(alert, EVENT_CLAIM_SECONDS[kind], now)
        for workspace_id in dirty:  # one workspace failing never costs the others their alerts
            try:
                for alert, ttl in await self._evaluate(workspace_id, now):
                    await self._claim_and_send(alert, ttl, now)
            except Exception as exc:
                self.evaluation_errors += 1
                logger.log(
                    logging.WARNING if self.evaluation_errors == 1 else logging.DEBUG,
                    "quota-hooks: evaluating alerts of workspace %r failed: %r",
                    workspace_id, exc,
                )

    async def _claim_and_send(self, alert: Alert, ttl: float, now: float) -> None:
        try:
            mine = await self.reader.claim(alert.dedupe_key, now, ttl)
        except Exception as exc:
            # An unreachable store must not silence alerts, nor repeat one on every failed
            # call: this process dedupes on its own until the store answers again.
            logger.debug("quota-hooks: claiming alert %s failed: %r", alert.dedupe_key, exc)
            mine = self._claim_locally(alert.dedupe_key, now, ttl)
        if not mine:
            self.suppressed += 1
            return
        try:
            await self.reader.keep(alert, now)
        except Exception as exc:  # the alert still goes out
            self.history_errors += 1
            logger.log(logging.WARNING if self.history_errors == 1 else logging.DEBUG,
                       "quota-hooks: keeping alert %s in the history failed: %r",
                       alert.dedupe_key, exc)
        self._send(alert)

    def _send(self, alert: Alert) -> None:
        self._dispatch.enqueue(alert)
        listeners = self._listeners
        if listeners is not None and listeners.listeners:
            listeners.alert(alert)

    def _claim_locally(self, key: str, now: float, ttl: float) -> bool:
        claims = self._local_claims
        if len(claims) > 10_000:
            for stale in [k for k, until in claims.items() if until <= now]:
                del claims[stale]
        if claims.get(key, float("-inf")) > now:
            return False
        claims[key] = now + ttl
        return True

    async def _evaluate(self, workspace_id: str, now: float) -> list[tuple[Alert, float]]:
        usage = await self.reader.usage(workspace_id, now)
        policy = usage.policy
        alerts: list[tuple[Alert, float]] = []
        for m in METRICS:
            limit = m.limit(policy)
            if limit is None:
                continue
            thresholds = Thresholds.of(policy, m)
            current = m.current(usage.counters)
            percent = percent_of(current, limit)
            key = (workspace_id, m.name)
            armed_at = self._armed.get(key)
            if armed_at is None and percent < thresholds.values[0]:
                continue  # the usual case: below every threshold, nothing sent to re-arm
            period = _period(usage, m) if m.is_budget else ""
            sent, armed_period = armed_at or (Decimal(-1), period)
            armed_level = sum(1 for value in thresholds.values if value <= sent)
            armed = armed_level if armed_period == period else 0
            moved = step(percent, armed, thresholds, self.hysteresis)
            for kind, threshold in moved.fired:
                alert = self._threshold_alert(workspace_id, m, kind, current, limit, percent,
                                              threshold, period, now, thresholds.listed)
                alerts.append((alert, m.claim_seconds))
            if moved.level == 0:
                self._armed.pop(key, None)
            else:
                self._armed[key] = (thresholds.at(moved.level), period)
        if now - self._forecast_at.get(workspace_id, float("-inf")) >= FORECAST_EVERY:
            if len(self._forecast_at) > 10_000:
                self._forecast_at.clear()
            self._forecast_at[workspace_id] = now
            for m in BUDGETS:
                projected = await self._projected(workspace_id, usage, now, m)
                if projected is not None:
                    alerts.append((projected, m.claim_seconds))
        return alerts

    async def _projected(self, workspace_id: str, usage: Usage, now: float,
                         metric: Metric) -> Alert | None:
        """``projected``, at most once per budget period: ``metric``'s budget runs out before
        its period ends at the run rate (checked at most every :data:`FORECAST_EVERY`
        seconds)."""
        if metric.limit(usage.policy) is None:
            return None
        forecast = await self.reader.spend_forecast(workspace_id, usage, now, metric)
        if (forecast is None or not forecast.will_exceed or forecast.budget_nanos is None
                or forecast.spent_nanos >= forecast.budget_nanos
                or forecast.history_days < PROJECTED_HISTORY_DAYS):
            return None
        when = datetime.fromtimestamp(forecast.projected_exhaustion or now, UTC)
        end = datetime.fromtimestamp(forecast.end, UTC)
        budget, projected = from_nanos(forecast.budget_nanos), from_nanos(forecast.projected_nanos)
        rate = from_nanos(round(forecast.rate_nanos_per_day))
        return Alert(
            kind=AlertKind.PROJECTED, workspace_id=workspace_id,
            scope=workspace_scope(workspace_id), metric=metric.name,
            current=float(from_nanos(forecast.spent_nanos)), limit=float(budget),
            percentage=round(float(percent_of(projected, budget)), 2),
            message=(f"Workspace {workspace_id!r} is projected to spend {format_usd(projected)} "
                     f"of its {format_usd(budget)} {metric.title} by "
                     f"{end:%Y-%m-%d %H:%M} UTC at {format_usd(rate)} a day; at that rate it "
                     f"runs out at {when:%Y-%m-%d %H:%M} UTC."),
            at=datetime.fromtimestamp(now, UTC),
            dedupe_key=(f"alert:{workspace_id}:{metric.name}:projected:"
                        f"{_period(usage, metric)}"),
        )

    @staticmethod
    def _threshold_alert(
        workspace_id: str,
        metric: Metric,
        kind: AlertKind,
        current: int | Decimal,
        limit: int | Decimal,
        percent: Decimal,
        threshold: Decimal,
        period: str,
        now: float,
        listed: bool = False,
    ) -> Alert:
        name = metric.title
        amount = metric.amount(current, limit)
        shown = f"{percent:.1f}%"
        if kind is AlertKind.RECOVERED:
            message = (f"Workspace {workspace_id!r} is back to normal on its {name}: "
                       f"{amount} ({shown}).")
        elif kind is AlertKind.QUOTA_EXCEEDED:
            message = f"Workspace {workspace_id!r} has used up its {name}: {amount} ({shown})."
        else:
            message = (f"Workspace {workspace_id!r} reached {float(threshold):g}% of its "
                       f"{name}: {amount} ({shown}).")
        return Alert(
            kind=kind,
            workspace_id=workspace_id,
            scope=workspace_scope(workspace_id),
            metric=metric.name,
            current=float(current),
            limit=float(limit),
            percentage=round(float(percent), 2),
            threshold=None if kind is AlertKind.RECOVERED else float(threshold),
            message=message,
            at=datetime.fromtimestamp(now, UTC),
            # A listed threshold names itself: two thresholds may send the same kind.
            dedupe_key=":".join(
                part for part in ("alert", workspace_id, metric.name, kind.value,
                                  f"{threshold:g}" if listed else "", period) if part
            ),
        )

    @staticmethod
    def _event_alert(workspace_id: str, kind: AlertKind, now: float) -> Alert:
        if kind is AlertKind.RATE_LIMITED:
            message = (f"Workspace {workspace_id!r} got a 429 from its provider: requests are "
                       f"being rate limited.")
        else:
            where = "all workspaces" if workspace_id == "*" else f"workspace {workspace_id!r}"
            message = (f"Tracking failed for {where}; calls went on, but usage may be "
                       f"undercounted (see the quota_hooks log).")
        return Alert(
            kind=kind,
            workspace_id=workspace_id,
            scope=workspace_scope(workspace_id),
            message=message,
            at=datetime.fromtimestamp(now, UTC),
            dedupe_key=f"alert:{workspace_id}:{kind.value}",
        )
