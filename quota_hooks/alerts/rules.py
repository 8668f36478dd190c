"""When a metric alerts: the threshold state machine, pure (no I/O, no clock, no locks).

A metric (rpm, rpd, tpm, tpd, monthly_budget_usd) has a rising list of thresholds, in
percent of its limit (:func:`~quota_hooks.metrics.percent_of`): the policy's ``thresholds``
if it sets them, else its warning and critical percentages; a budget always has 100 last.
Each threshold fires once per crossing: ``threshold`` below the warning percentage,
``warning`` from it, ``critical`` from the critical percentage and, for a budget,
``quota_exceeded`` at 100 %. A level re-arms only after usage falls below its threshold minus
the hysteresis (in points), or when a new budget period starts; ``recovered`` is sent when a
metric that had alerted falls below its lowest threshold minus the hysteresis. The status
report uses the same percent and the same comparisons (:func:`quota_hooks.status.evaluate`),
so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from ..metrics import Metric
from ..policy import QuotaPolicy
from .model import AlertKind

__all__ = ["Step", "Thresholds", "step"]

_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The rising thresholds of one metric under one policy, and the kind each one sends."""

    values: tuple[Decimal, ...]
    kinds: tuple[AlertKind, ...]
    listed: bool = False
    """True when the policy lists its thresholds (alerts then name theirs in their key)."""

    @classmethod
    def of(cls, policy: QuotaPolicy, metric: Metric) -> Thresholds:
        """Exact thresholds of ``metric`` under ``policy`` (``80.0`` is exactly 80)."""
        return _thresholds(policy.warning_percent, policy.critical_percent, policy.thresholds,
                           metric.is_budget)

    def at(self, level: int) -> Decimal:
        """The percentage of ``level`` (1 is the lowest threshold)."""
        return self.values[level - 1]


@lru_cache(maxsize=256)  # the alert engine asks for every metric of every workspace it evaluates
def _thresholds(warning_percent: float, critical_percent: float,
                listed_values: tuple[float, ...] | None, is_budget: bool) -> Thresholds:
    warning = Decimal(str(warning_percent))
    critical = Decimal(str(critical_percent))
    listed = listed_values is not None
    values = sorted({Decimal(str(t)) for t in listed_values or ()} if listed
                    else {warning, critical})
    if is_budget and values[-1] < _HUNDRED:
        values.append(_HUNDRED)
    kinds = tuple(
        AlertKind.QUOTA_EXCEEDED if is_budget and value >= _HUNDRED
        else AlertKind.CRITICAL if value >= critical
        else AlertKind.WARNING if value >= warning
        else AlertKind.THRESHOLD
        for value in values)
    return Thresholds(tuple(values), kinds, listed)


@dataclass(frozen=True, slots=True)
class Step:
    """What one evaluation of a metric decided: the level it is armed at now, and the alerts
    to send (each with the threshold it crossed)."""

    level: int
    fired: tuple[tuple[AlertKind, Decimal], ...] = ()


def step(percent: Decimal, armed: int, thresholds: Thresholds, hysteresis: Decimal) -> Step:
    """Move a metric from level ``armed`` (0: nothing sent) given its ``percent`` now.

    Rising past several levels at once sends each of them, lowest first. Falling re-arms the
    levels that usage fell clearly below (``hysteresis`` points under their threshold); falling
    clear of every level sends ``recovered``.
    """
    values = thresholds.values
    armed = min(armed, len(values))  # the policy lost thresholds since
    reached = next((level for level in range(len(values), 0, -1)
                    if percent >= values[level - 1]), 0)
    if reached > armed:
        return Step(reached, tuple((thresholds.kinds[crossed - 1], values[crossed - 1])
                                   for crossed in range(armed + 1, reached + 1)))
    if reached == armed:
        return Step(armed)
    keep = next((level for level in range(armed, 0, -1)
                 if percent >= values[level - 1] - hysteresis), 0)
    if keep:
        return Step(keep)
    return Step(0, ((AlertKind.RECOVERED, values[0]),))
