"""The alert engine: turns usage into alerts, once per crossing, and delivers them off the hot
path.

How it works:

* ``record()`` only marks the workspace as changed (a dict insert) and wakes one background
  thread, ``quota-hooks-alerts``. Nothing else happens on the caller's path.
* That thread reads the workspace's counters, runs each metric's state machine and claims each
  new alert's ``dedupe_key`` in the store (so several processes sharing a store send it once).
* Each sink has its own bounded queue and delivery task. A full queue drops its oldest alert
  (counted in ``dropped``); each send has a timeout; a sink that raises or hangs affects no
  other sink and no call.

The state machine of a metric (rpm, rpd, tpm, tpd, monthly_budget_usd) fires ``warning`` when
usage reaches the warning threshold, ``critical`` at the critical threshold and, for the
budget, ``quota_exceeded`` at 100 %: each once per crossing. A level re-arms only after usage
falls below its threshold minus ``hysteresis_percent`` points, or when a new budget month
starts; ``recovered`` is sent when a metric that had alerted falls below warning minus the
margin. A 429 from the provider sends ``rate_limited`` and a failure inside tracking sends
``degraded``.

Across processes, an alert is claimed in the store for a while: an alert of one kind for one
metric goes out at most once per minute for per-minute limits, once per hour for per-day
limits, once per month for the budget, once per minute for ``rate_limited`` and once per five
minutes for ``degraded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio

from .._exit import close_at_exit
from ..errors import ConfigurationError
from ..pricing import format_usd, from_nanos
from ..storage.base import workspace_scope
from ..windows import month_key
from .model import Alert, AlertKind, AlertSink, SinkLike, as_sink

if TYPE_CHECKING:
    from ..manager import QuotaManager

__all__ = ["AlertEngine"]

logger = logging.getLogger("quota_hooks.alerts")

_LEVEL_KINDS = {1: AlertKind.WARNING, 2: AlertKind.CRITICAL, 3: AlertKind.QUOTA_EXCEEDED}
#: How long a claimed alert stays claimed across processes, per metric.
CLAIM_SECONDS = {
    "rpm": 60.0,
    "tpm": 60.0,
    "rpd": 3600.0,
    "tpd": 3600.0,
    "monthly_budget_usd": 32 * 86400.0,  # the key names the month
    "rate_limited": 60.0,
    "degraded": 300.0,
}
_NAMES = {
    "rpm": "requests-per-minute limit",
    "rpd": "requests-per-day limit",
    "tpm": "tokens-per-minute limit",
    "tpd": "tokens-per-day limit",
    "monthly_budget_usd": "monthly budget",
}


@dataclass(slots=True)
class _Outbox:
    sink: AlertSink
    queue: deque[Alert]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    busy: bool = False
    started: bool = False
    failures: int = 0


@dataclass(slots=True)
class _Armed:
    level: int
    period: str


class AlertEngine:
    """Evaluates a manager's workspaces and delivers alerts to sinks.

    Built by :class:`~quota_hooks.QuotaManager` when it is given ``sinks``; use
    ``manager.add_sink()`` and ``manager.drain()`` rather than this class directly.

    Args:
        manager: the manager whose usage is watched.
        sinks: alert sinks, or plain sync/async callables.
        queue_size: alerts held per sink before the oldest is dropped.
        sink_timeout: seconds one ``send`` may take (retries included).
        hysteresis_percent: points below a threshold that usage must fall to re-arm it.
    """

    def __init__(
        self,
        manager: QuotaManager,
        sinks: Iterable[SinkLike] = (),
        *,
        queue_size: int = 1000,
        sink_timeout: float = 30.0,
        hysteresis_percent: float = 5.0,
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
        self.manager = manager
        self.queue_size = queue_size
        self.sink_timeout = float(sink_timeout)
        self.hysteresis = Decimal(str(hysteresis_percent))
        self._outboxes: list[_Outbox] = []
        self._dirty: dict[str, None] = {}
        # Events coalesce per (workspace, kind): a store outage or a burst of 429s is one
        # claim per evaluation round, not one per failed call.
        self._events: dict[tuple[str, AlertKind], None] = {}
        self._local_claims: dict[str, float] = {}
        self._armed: dict[tuple[str, str], _Armed] = {}
        self._lock = threading.Lock()
        self._kicked = False
        self._evaluating = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.sent = 0
        """Alerts delivered, counted per sink."""
        self.failed = 0
        """Deliveries that raised or timed out, counted per sink."""
        self.dropped = 0
        """Alerts dropped because a sink's queue was full."""
        self.suppressed = 0
        """Alerts another process had already claimed (or this one, when the store was down)."""
        self.evaluation_errors = 0
        """Workspaces whose evaluation failed (logged; the next change evaluates them again)."""
        self.lost = 0
        """Alerts still queued when the engine closed (at exit: not sent in time), logged."""
        for sink in sinks:
            self.add_sink(sink)

    @property
    def sinks(self) -> list[AlertSink]:
        """The sinks, in the order they were added."""
        return [outbox.sink for outbox in self._outboxes]

    def add_sink(self, sink: SinkLike) -> AlertSink:
        """Add a sink (an :class:`AlertSink` or a callable); returns it as an AlertSink."""
        resolved = as_sink(sink)
        outbox = _Outbox(resolved, deque(maxlen=self.queue_size))
        with self._lock:
            self._outboxes = [*self._outboxes, outbox]
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._start_delivery, outbox)
        return resolved

    # ------------------------------------------------------------------ hot path
    def notify(self, workspace_id: str, *, rate_limited: bool = False) -> None:
        """Note that ``workspace_id`` has new usage. Cheap, thread-safe, never blocks."""
        if self._closing:
            return
        with self._lock:
            self._dirty[workspace_id] = None
            if rate_limited:
                self._events[(workspace_id, AlertKind.RATE_LIMITED)] = None
        self._kick()

    def note_degraded(self, workspace_id: str | None) -> None:
        """Note a failure inside tracking (sends ``degraded``)."""
        if self._closing:
            return
        with self._lock:
            self._events[(workspace_id or "*", AlertKind.DEGRADED)] = None
        self._kick()

    def _kick(self) -> None:
        if self._kicked or self._closing:
            return
        self._kicked = True
        if self._thread is None:
            self._start_thread()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped after close()
                loop.call_soon_threadsafe(wake.set)

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=asyncio.run, args=(self._main(),), name="quota-hooks-alerts", daemon=True
            )
            self._thread.start()
        close_at_exit(self, 1)  # a plain exit still sends what is queued
        self._ready.wait(10)

    # ------------------------------------------------------------------ waiting
    def idle(self) -> bool:
        """True when every noted change has been evaluated and every alert delivered."""
        if self._kicked or self._evaluating or self._dirty or self._events:
            return False
        return all(not o.queue and not o.busy for o in self._outboxes)

    def drain(self, timeout: float = 5.0) -> bool:
        """Block until :meth:`idle` (False on timeout)."""
        deadline = time.monotonic() + timeout
        pause = 0.0002
        while not self.idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        return True

    async def adrain(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - mirrors drain()
        """Async :meth:`drain`."""
        deadline = time.monotonic() + timeout
        pause = 0.0002
        while not self.idle():
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop the thread; alerts
        not delivered by then are logged as lost and counted in :attr:`lost`."""
        thread = self._thread
        if thread is None or self._closing:
            return
        self.drain(timeout)
        self._closing = True
        lost = sum(len(o.queue) + (1 if o.busy else 0) for o in self._outboxes)
        if lost:
            self.lost += lost
            logger.error("quota-hooks: %d alert(s) were not delivered within %gs and are lost "
                         "(sinks: %s)", lost, timeout,
                         ", ".join(repr(o.sink) for o in self._outboxes if o.queue or o.busy))
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)
        thread.join(timeout)
        with self._lock:  # noted after the final drain: nothing is left to evaluate them
            self._kicked = False
            self._dirty.clear()
            self._events.clear()

    # ------------------------------------------------------------------ the thread
    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        for outbox in self._outboxes:
            self._start_delivery(outbox)
        self._ready.set()
        self._wake.set()  # a kick may have come before the loop existed
        try:
            while not self._closing:
                await self._wake.wait()
                self._wake.clear()
                self._evaluating = True
                self._kicked = False
                try:
                    await self._evaluate_pending()
                except Exception:  # never let the thread die
                    logger.exception("quota-hooks: evaluating alerts failed")
                finally:
                    self._evaluating = False
        finally:
            for task in self._tasks:
                task.cancel()

    def _start_delivery(self, outbox: _Outbox) -> None:
        if outbox.started:
            return
        outbox.started = True
        outbox.wake = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._deliver(outbox))
        self._tasks.add(task)
        if outbox.queue:
            outbox.wake.set()

    async def _evaluate_pending(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            events, self._events = self._events, {}
        now = self.manager.clock()
        for workspace_id, kind in events:
            alert = self._event_alert(workspace_id, kind, now)
            await self._claim_and_dispatch(alert, CLAIM_SECONDS[kind.value], now)
        for workspace_id in dirty:  # one workspace failing never costs the others their alerts
            try:
                for alert, ttl in await self._evaluate(workspace_id, now):
                    await self._claim_and_dispatch(alert, ttl, now)
            except Exception as exc:
                self.evaluation_errors += 1
                logger.log(
                    logging.WARNING if self.evaluation_errors == 1 else logging.DEBUG,
                    "quota-hooks: evaluating alerts of workspace %r failed: %r",
                    workspace_id, exc,
                )

    async def _claim_and_dispatch(self, alert: Alert, ttl: float, now: float) -> None:
        try:
            mine = await self.manager.store.aclaim(alert.dedupe_key, now, ttl)
        except Exception as exc:
            # An unreachable store must not silence alerts, nor repeat one on every failed
            # call: this process dedupes on its own until the store answers again.
            logger.debug("quota-hooks: claiming alert %s failed: %r", alert.dedupe_key, exc)
            mine = self._claim_locally(alert.dedupe_key, now, ttl)
        if not mine:
            self.suppressed += 1
            return
        for outbox in self._outboxes:
            if len(outbox.queue) == outbox.queue.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
            outbox.queue.append(alert)
            outbox.wake.set()

    def _claim_locally(self, key: str, now: float, ttl: float) -> bool:
        claims = self._local_claims
        if len(claims) > 10_000:
            for stale in [k for k, until in claims.items() if until <= now]:
                del claims[stale]
        if claims.get(key, float("-inf")) > now:
            return False
        claims[key] = now + ttl
        return True

    async def _deliver(self, outbox: _Outbox) -> None:
        while True:
            await outbox.wake.wait()
            outbox.wake.clear()
            while outbox.queue:
                outbox.busy = True
                alert = outbox.queue.popleft()
                try:
                    with anyio.fail_after(self.sink_timeout):
                        await outbox.sink.send(alert)
                    self.sent += 1
                except Exception as exc:
                    self.failed += 1
                    outbox.failures += 1
                    logger.log(
                        logging.WARNING if outbox.failures == 1 else logging.DEBUG,
                        "quota-hooks: alert sink %r failed on %s: %r%s",
                        outbox.sink, alert.kind.value, exc,
                        " (further failures of this sink are counted in failed)"
                        if outbox.failures == 1 else "",
                    )
                finally:
                    outbox.busy = False

    # ------------------------------------------------------------------ evaluation
    async def _evaluate(self, workspace_id: str, now: float) -> list[tuple[Alert, float]]:
        manager = self.manager
        policy = manager.policy_for(workspace_id)
        month = month_key(now, policy.timezone)
        scope = workspace_scope(workspace_id)
        c = await manager.store.acounters(scope, now, month)
        metrics: list[tuple[str, int | Decimal, int | Decimal | None]] = [
            ("rpm", c.requests_minute, policy.rpm),
            ("rpd", c.requests_day, policy.rpd),
            ("tpm", c.tokens_minute, policy.tpm),
            ("tpd", c.tokens_day, policy.tpd),
            ("monthly_budget_usd", from_nanos(c.cost_month_nanos), policy.monthly_budget_usd),
        ]
        warning = Decimal(str(policy.warning_percent))
        critical = Decimal(str(policy.critical_percent))
        thresholds = {1: warning, 2: critical, 3: Decimal(100)}
        alerts: list[Alert] = []
        for metric, current, limit in metrics:
            if limit is None:
                continue
            budget = metric == "monthly_budget_usd"
            period = month if budget else ""
            if limit > 0:
                percent = Decimal(current) * 100 / Decimal(limit)
            else:
                percent = Decimal(100) if current > 0 else Decimal(0)
            reached = 0
            for level in (3, 2, 1) if budget else (2, 1):
                if percent >= thresholds[level]:
                    reached = level
                    break
            armed = self._armed.get((workspace_id, metric))
            level = armed.level if armed is not None and armed.period == period else 0
            new_level = level
            if reached > level:
                for crossed in range(level + 1, reached + 1):
                    alerts.append(self._threshold_alert(
                        workspace_id, metric, _LEVEL_KINDS[crossed], current, limit, percent,
                        thresholds[crossed], period, now))
                new_level = reached
            elif reached < level:
                keep = 0
                for candidate in range(level, 0, -1):
                    if percent >= thresholds[candidate] - self.hysteresis:
                        keep = candidate
                        break
                new_level = keep
                if keep == 0:
                    alerts.append(self._threshold_alert(
                        workspace_id, metric, AlertKind.RECOVERED, current, limit, percent,
                        warning, period, now))
            if new_level != level or armed is None or armed.period != period:
                if new_level == 0:
                    self._armed.pop((workspace_id, metric), None)
                else:
                    self._armed[(workspace_id, metric)] = _Armed(new_level, period)
        return [(alert, CLAIM_SECONDS[alert.metric or ""]) for alert in alerts]

    def _threshold_alert(
        self,
        workspace_id: str,
        metric: str,
        kind: AlertKind,
        current: int | Decimal,
        limit: int | Decimal,
        percent: Decimal,
        threshold: Decimal,
        period: str,
        now: float,
    ) -> Alert:
        name = _NAMES[metric]
        if metric == "monthly_budget_usd":
            amount = f"{format_usd(current)} of {format_usd(limit)}"
        else:
            unit = "requests" if metric in ("rpm", "rpd") else "tokens"
            amount = f"{current} of {limit} {unit}"
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
            metric=metric,
            current=float(current),
            limit=float(limit),
            percentage=round(float(percent), 2),
            message=message,
            at=datetime.fromtimestamp(now, UTC),
            dedupe_key=":".join(
                part for part in ("alert", workspace_id, metric, kind.value, period) if part
            ),
        )

    def _event_alert(self, workspace_id: str, kind: AlertKind, now: float) -> Alert:
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
