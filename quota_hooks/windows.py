"""Window arithmetic shared by every store.

Time is a float of epoch seconds from an injected clock (``time.time`` by default).

* Per minute: a rolling 60 s window of 1 s buckets. A call at second ``t`` (its bucket is
  ``floor(t)``) counts until the clock reaches ``floor(t) + 60``: at ``t = 100.0`` it still
  counts at 159.999 and no longer at 160.0.
* Per day: a rolling 24 h window of 1-minute buckets, by the same rule.
* Budgets: a calendar period in the policy's time zone (:data:`Period`): the local day
  (``"2026-02-05"``), the ISO week, Monday first (``"2026-W06"``), or the month
  (``"2026-02"``).

Memory is bounded by the window, not by traffic: a window holds at most its buckets, and only
those that hold counts.

The wall clock may step back (an NTP correction, a VM resumed from a snapshot), and a caller
may read or write with a ``now`` taken a moment before another caller's (a thread that was
descheduled, a batch that waited for its writer). Usage is never written into the future. A
``now`` behind the latest one seen by less than a whole window is such a late caller: every
bucket stays where it is and the window is the one at the latest now (a late reader sees
what a fresh one would; a small step back counts its last calls until a window after their
own time, at most one window longer than the new clock says: an over-count, never an
under-count). A ``now`` a whole window or more behind is a clock that stepped back: the
buckets it left in the future are folded into now's bucket, so they keep counting for one
more whole window from now: a window never switches off, and never stays frozen until the
clock catches up. A bucket the window has left is kept one more window, out of the sums, so
that a caller from before a step back (whose window has left the folded bucket) cannot make
the stepped clock forget it. An undo (a reservation settled or released) takes from its own
bucket only: after a fold merged that bucket away, what it held counts until the merged
bucket leaves the window (an over-count), never another call's count.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = [
    "DAY",
    "MINUTE",
    "PERIODS",
    "Period",
    "RollingCounter",
    "Window",
    "buckets",
    "month_bounds",
    "month_key",
    "period_bounds",
    "period_key",
]

Period = Literal["day", "week", "month"]
"""A budget period, in the policy's time zone; a week is the ISO week (Monday first)."""
PERIODS: tuple[Period, ...] = ("day", "week", "month")


@dataclass(frozen=True, slots=True)
class Window:
    """A rolling window of ``buckets`` buckets of ``bucket_seconds`` seconds each."""

    name: str
    bucket_seconds: int
    buckets: int
    tolerance: int = 2
    """Buckets ahead of now that still count as the present (the jitter of concurrent
    callers' clocks) when looking for the bucket that frees room next."""

    def stepped_back(self, current: int, newest: int) -> bool:
        """Whether ``current`` (now's bucket) is a whole window or more behind the ``newest``
        bucket held: a clock that stepped back, whose future buckets are folded into now's.
        Less is a late caller (see the module's docstring): nothing moves."""
        return newest - current >= self.buckets

    @property
    def seconds(self) -> int:
        """The span of the window."""
        return self.bucket_seconds * self.buckets

    def bucket(self, now: float) -> int:
        """The bucket that a call at ``now`` falls in."""
        return int(now // self.bucket_seconds)

    def oldest(self, now: float) -> int:
        """The oldest bucket still inside the window at ``now``."""
        return self.bucket(now) - self.buckets + 1

    def expires_at(self, bucket: int) -> float:
        """The instant at which ``bucket`` leaves the window."""
        return float((bucket + self.buckets) * self.bucket_seconds)


_NEVER = -(2**62)

MINUTE = Window("minute", 1, 60, tolerance=2)
DAY = Window("day", 60, 1440, tolerance=1)


def buckets(now: float) -> tuple[int, int]:
    """The :data:`MINUTE` and the :data:`DAY` bucket a call at ``now`` falls in (one call
    for both, on the hot path)."""
    return int(now // MINUTE.bucket_seconds), int(now // DAY.bucket_seconds)


@lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    return UTC if name == "UTC" else ZoneInfo(name)


def month_key(now: float, tz: str = "UTC") -> str:
    """The budget month that ``now`` falls in, in zone ``tz``: ``"YYYY-MM"``."""
    return _month_of_second(int(now // 1), tz)


@lru_cache(maxsize=256)
def _month_of_second(second: int, tz: str) -> str:
    # Zone offsets are whole seconds, so every instant of one second is in the same month.
    local = datetime.fromtimestamp(second, _zone(tz))
    return f"{local.year:04d}-{local.month:02d}"


def day_key(now: float, tz: str = "UTC") -> str:
    """The calendar day that ``now`` falls in, in zone ``tz``: ``"YYYY-MM-DD"``."""
    return _day_of_minute(int(now // 60), tz)


@lru_cache(maxsize=256)
def _day_of_minute(minute: int, tz: str) -> str:
    # Zone offsets are whole minutes, so every instant of one minute is on the same day.
    local = datetime.fromtimestamp(minute * 60, _zone(tz))
    return f"{local.year:04d}-{local.month:02d}-{local.day:02d}"


_SPANS = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_since(text: str, now: float) -> float:
    """A start time from ``"30d"``, ``"12h"``, ``"90m"``, ``"2w"`` (ago), an ISO date or time
    (``"2026-01-05"``, ``"2026-01-05T10:00:00Z"``; UTC unless it says otherwise), or epoch
    seconds. Raises ValueError naming the text."""
    value = text.strip()
    unit = value[-1:].lower()
    try:
        if unit in _SPANS and value[:-1].isdigit():
            return now - int(value[:-1]) * _SPANS[unit]  # may overflow: a ValueError then
        return float(value) if value.replace(".", "", 1).isdigit() else _iso_seconds(value)
    except (ValueError, OverflowError):
        raise ValueError(
            f"since must be like 30d, 12h, 2026-01-05 or epoch seconds, got {text!r}"
        ) from None


def _iso_seconds(value: str) -> float:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def month_bounds(now: float, tz: str = "UTC") -> tuple[float, float]:
    """Epoch seconds of the start of ``now``'s month and of the next month, in zone ``tz``."""
    zone = _zone(tz)
    local = datetime.fromtimestamp(now, zone)
    start = datetime(local.year, local.month, 1, tzinfo=zone)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    end = datetime(year, month, 1, tzinfo=zone)
    return start.timestamp(), end.timestamp()


def _local_date(now: float, zone: tzinfo) -> date:
    return datetime.fromtimestamp(now, zone).date()


def _start_of(day: date, zone: tzinfo) -> float:
    """The first instant of local ``day`` (``fold=0``: a midnight in a DST gap is the gap's
    end, which is the day's first instant)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def period_dates(today: date, period: Period) -> tuple[date, date]:
    """The first local date of ``today``'s period and the first date after it."""
    if period == "day":
        return today, today + timedelta(days=1)
    if period == "week":
        monday = today - timedelta(days=today.weekday())
        return monday, monday + timedelta(days=7)
    if period == "month":
        first = today.replace(day=1)
        after = (date(first.year + 1, 1, 1) if first.month == 12
                 else date(first.year, first.month + 1, 1))
        return first, after
    raise ValueError(f"period must be 'day', 'week' or 'month', got {period!r}")


def period_bounds(now: float, period: Period, zone: str = "UTC") -> tuple[float, float]:
    """Epoch seconds of the start of ``now``'s period and of the next one, in IANA ``zone``.

    Local midnights, so a day is 23, 24 or 25 hours long across a DST change; a week runs
    from Monday 00:00 to the next Monday 00:00.
    """
    tz = _zone(zone)
    first, after = period_dates(_local_date(now, tz), period)
    return _start_of(first, tz), _start_of(after, tz)


def period_key(now: float, period: Period, zone: str = "UTC") -> str:
    """The name of ``now``'s period: ``"2026-03-05"``, ``"2026-W10"`` (ISO week) or
    ``"2026-03"``; it names the totals a period budget is kept in, and the claim that makes
    an alert fire once per period."""
    return _period_of_minute(int(now // 60), period, zone)


@lru_cache(maxsize=256)
def _period_of_minute(minute: int, period: Period, zone: str) -> str:
    # Zone offsets are whole minutes, so every instant of one minute is in the same period.
    today = _local_date(minute * 60, _zone(zone))
    if period == "day":
        return today.isoformat()
    if period == "week":
        year, week, _ = today.isocalendar()
        return f"{year:04d}-W{week:02d}"
    if period == "month":
        return f"{today.year:04d}-{today.month:02d}"
    raise ValueError(f"period must be 'day', 'week' or 'month', got {period!r}")


class RollingCounter:
    """The buckets of a rolling window that hold counts, several integers per bucket.

    ``add`` puts counts into a bucket (ignored when the bucket has left the window); ``totals``
    sums the buckets still inside the window. Only buckets that hold something exist (two
    parallel lists, ids ascending), so an idle scope costs a few hundred bytes rather than a
    ring of 1,440 buckets; running sums make both O(1) amortized: a bucket is subtracted
    once, when the window slides past it. A bucket the window has left is kept one more
    window (retired, out of the sums), so that a clock that steps back after a caller with a
    later ``now`` slid past it finds it again (see the module's docstring). Not thread-safe:
    the owning store locks.
    """

    __slots__ = ("_counts", "_cursor", "_hot", "_hot_end", "_hot_start", "_ids", "_newest",
                 "_retired", "_sums", "fields", "window")

    def __init__(self, window: Window, fields: int) -> None:
        self.window = window
        self.fields = fields
        self._ids: list[int] = []  # ascending
        self._counts: list[list[int]] = []  # the counts of each id, in the same order
        # Invariant: _sums is the sum of every bucket held, and every one is >= _cursor, the
        # window's start at the latest now seen (it only moves forward, but for a fold).
        self._sums = [0] * fields
        self._cursor = _NEVER
        self._newest = _NEVER
        # Buckets the window has left, ids ascending, all >= _cursor - window.buckets (None
        # when there are none: most scopes are idle, and an empty list costs 56 bytes).
        self._retired: list[tuple[int, list[int]]] | None = None
        # The fast path: while ``now`` stays inside the newest bucket (``_hot``, from
        # ``_hot_start`` to ``_hot_end``), nothing slides or folds: counts go straight in.
        self._hot = _NEVER
        self._hot_start = self._hot_end = 0.0

    def __len__(self) -> int:
        """Buckets held (in the window or retired)."""
        return len(self._ids) + (len(self._retired) if self._retired else 0)

    def _present(self, now: float) -> int:
        """Now's bucket, after folding when now is a whole window behind the latest now seen
        (a clock that stepped back); a late caller folds nothing."""
        current = self.window.bucket(now)
        if current < self._cursor:
            self._fold(current)
        return current

    def _fold(self, current: int) -> None:
        """The clock went back: every bucket newer than ``current`` joins ``current`` (it
        counts for a whole window from now), retired ones inside now's window count again,
        and older ones are dropped."""
        oldest = current - self.window.buckets + 1
        kept: dict[int, list[int]] = {}
        held = [*(self._retired or ()), *zip(self._ids, self._counts, strict=True)]
        for bucket_id, counts in held:
            if bucket_id < oldest:
                continue
            into = kept.setdefault(min(bucket_id, current), [0] * self.fields)
            for i, value in enumerate(counts):
                into[i] += value
        self._ids = sorted(kept)
        self._counts = [kept[bucket_id] for bucket_id in self._ids]
        self._sums = [sum(values[i] for values in self._counts) for i in range(self.fields)]
        self._retired = None
        self._cursor = oldest
        self._newest = self._ids[-1] if self._ids else current
        self._hot = _NEVER

    def _advance(self, oldest: int) -> None:
        """Slide the window's start to ``oldest``: older buckets leave the sums and are
        retired for one more window."""
        if oldest <= self._cursor:
            return
        ids = self._ids
        gone = bisect_left(ids, oldest)
        retired = self._retired
        if gone:
            sums = self._sums
            for counts in self._counts[:gone]:
                for i, value in enumerate(counts):
                    sums[i] -= value
            if retired is None:
                retired = self._retired = []
            retired.extend(zip(ids[:gone], self._counts[:gone], strict=True))
            del ids[:gone]
            del self._counts[:gone]
            if not ids or ids[-1] != self._hot:
                self._hot = _NEVER  # the fast path's bucket has left (a read at a later now)
        if retired and retired[0][0] < oldest - self.window.buckets:
            keep = oldest - self.window.buckets
            retired[:] = [item for item in retired if item[0] >= keep]
            if not retired:
                self._retired = None
        self._cursor = oldest

    def add(self, bucket: int, counts: Sequence[int], now: float) -> bool:
        """Add ``counts`` to ``bucket`` (at most now's: never into the future); False
        (nothing added) if it has left the window. An undo (no count above zero) takes from
        its own bucket only, never from another call's: nothing when that bucket is gone."""
        if bucket == self._hot and self._hot_start <= now < self._hot_end:
            values, sums = self._counts[-1], self._sums
            for i, count in enumerate(counts):
                if count:
                    if count < 0 and values[i] + count < 0:  # never below zero (see below)
                        count = -values[i]
                    values[i] += count
                    sums[i] += count
            return True
        current = self._present(now)
        if max(counts) <= 0:
            return self._undo(bucket, counts)
        # Never into the future: at most now's bucket, or the newest held for a late caller.
        bucket = min(bucket, current if current >= self._newest else self._newest)
        oldest = current - self.window.buckets + 1
        if bucket < oldest:
            return False
        self._advance(oldest)
        if bucket < self._cursor:  # an older ``now`` than the window has already seen
            return False
        ids = self._ids
        if ids and ids[-1] == bucket:  # the usual case: now's bucket, again
            values = self._counts[-1]
        else:
            at = bisect_left(ids, bucket)
            if at < len(ids) and ids[at] == bucket:
                values = self._counts[at]
            else:
                values = [0] * self.fields
                ids.insert(at, bucket)
                self._counts.insert(at, values)
        sums = self._sums
        for i, count in enumerate(counts):
            # A bucket never goes below zero: a settle by difference takes at most what its
            # bucket holds (an over-count, never an under-count).
            if count < 0 and values[i] + count < 0:
                count = -values[i]
            values[i] += count
            sums[i] += count
        if bucket > self._newest:
            self._newest = bucket
        if bucket == current and ids[-1] == bucket:
            width = self.window.bucket_seconds
            self._hot, self._hot_start, self._hot_end = bucket, bucket * width, (
                bucket + 1) * width
        return True

    def _undo(self, bucket: int, counts: Sequence[int]) -> bool:
        """Take ``counts`` (none above zero) from ``bucket`` itself, in the window or
        retired, at most what it holds. A bucket a fold merged away is not searched for:
        what it held keeps counting until its merged bucket leaves (an over-count)."""
        at = bisect_left(self._ids, bucket)
        if at < len(self._ids) and self._ids[at] == bucket:
            values, sums = self._counts[at], self._sums
        else:
            found = [c for b, c in self._retired or () if b == bucket]
            if not found:
                return False
            values, sums = found[0], None
        for i, count in enumerate(counts):
            if count < 0:
                count = max(count, -values[i])
                values[i] += count
                if sums is not None:
                    sums[i] += count
        return True

    def totals(self, now: float) -> list[int]:
        """The sum of each count over the buckets inside the window at ``now`` (for a late
        caller, the window at the latest now seen)."""
        if self._hot_start <= now < self._hot_end and self._ids and self._ids[-1] == self._hot:
            return list(self._sums)
        self._present(now)
        self._advance(self.window.oldest(now))
        return list(self._sums)

    def first_bucket_with(self, now: float, field: int) -> int | None:
        """The oldest in-window bucket with a non-zero ``field``: when room frees up next."""
        self._present(now)
        self._advance(self.window.oldest(now))
        # (a late caller's window is the latest one: its buckets up to the newest count too)
        newest = max(self.window.bucket(now), self._newest) + self.window.tolerance
        for bucket_id, counts in zip(self._ids, self._counts, strict=True):
            if bucket_id > newest:
                return None
            if counts[field]:
                return bucket_id
        return None
