"""Test helpers, public so that users can test their own code offline.

* :class:`ManualClock`: an injectable clock that moves only when told to.
* :class:`FakeOpenAI`: an offline OpenAI-compatible API, as an httpx/httpx2 transport or on a
  loopback socket, with configurable usage (:class:`FakeUsage`) and injectable errors.
* :class:`CaptureSink`: an alert sink that keeps what it receives.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from ._fake_openai import FakeOpenAI, FakeReply, FakeUsage
from .alerts.model import Alert

__all__ = ["CaptureSink", "FakeOpenAI", "FakeReply", "FakeUsage", "ManualClock"]


class CaptureSink:
    """An alert sink for tests: ``manager.add_sink(sink := CaptureSink())``, then
    ``manager.drain()`` and read ``sink.alerts``."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CaptureSink({len(self.alerts)} alerts)"

    async def send(self, alert: Alert) -> None:
        """Keep ``alert``."""
        with self._lock:
            self.alerts.append(alert)

    @property
    def kinds(self) -> list[str]:
        """The kinds received, in order (``["warning", "critical"]``)."""
        return [alert.kind.value for alert in self.alerts]

    def clear(self) -> None:
        """Forget what was received."""
        with self._lock:
            self.alerts.clear()


class ManualClock:
    """A clock for ``QuotaManager(clock=...)`` that moves only when told to.

    ``ManualClock(datetime(2026, 2, 28, 23, 59, 59, tzinfo=timezone.utc))`` or epoch seconds.
    """

    def __init__(self, start: float | datetime = 1_767_225_600.0) -> None:  # 2026-01-01 UTC
        self._now = _epoch(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds!r})")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """For ``manager.sleep = clock.sleep``: waiting moves the clock, instantly."""
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """For ``manager.asleep = clock.asleep``."""
        self.advance(seconds)

    def set(self, moment: float | datetime) -> None:
        """Jump to ``moment`` (epoch seconds or an aware datetime)."""
        with self._lock:
            self._now = _epoch(moment)

    def datetime(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, UTC)


def _epoch(moment: float | datetime) -> float:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime (add tzinfo=timezone.utc)")
        return moment.timestamp()
    return float(moment)
