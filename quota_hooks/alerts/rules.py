"""When a metric alerts: the threshold state machine, pure (no I/O, no clock, no locks).

A metric (rpm, rpd, tpm, tpd, monthly_budget_usd) fires ``warning`` when its
:func:`~quota_hooks.metrics.percent_of` reaches the warning threshold, ``critical`` at the
critical threshold and, for the budget, ``quota_exceeded`` at 100 %: each once per crossing. A
level re-arms only after usage falls below its threshold minus the hysteresis (in points), or
when a new budget period starts; ``recovered`` is sent when a metric that had alerted falls
below warning minus the hysteresis. The status report uses the same percent and the same
comparisons (:func:`quota_hooks.status.evaluate`), so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ..metrics import Metric
from .model import AlertKind

__all__ = ["LEVEL_KINDS", "Step", "Thresholds", "step"]

#: The alert a level sends when it is reached.
LEVEL_KINDS = {1: AlertKind.WARNING, 2: AlertKind.CRITICAL, 3: AlertKind.QUOTA_EXCEEDED}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The percentages of one policy: level 1 (warning), 2 (critical), 3 (used up: 100)."""

    warning: Decimal
    critical: Decimal

    @classmethod
    def of(cls, warning_percent: float, critical_percent: float) -> Thresholds:
        """Exact thresholds from a policy's float percentages (``80.0`` is exactly 80)."""
        return cls(Decimal(str(warning_percent)), Decimal(str(critical_percent)))

    def at(self, level: int) -> Decimal:
        """The percentage of ``level``."""
        return {1: self.warning, 2: self.critical}.get(level, Decimal(100))


@dataclass(frozen=True, slots=True)
class Step:
    """What one evaluation of a metric decided: the level it is armed at now, and the alerts
    to send (each with the threshold it crossed)."""

    level: int
    fired: tuple[tuple[AlertKind, Decimal], ...] = ()


def step(
    metric: Metric, percent: Decimal, armed: int, thresholds: Thresholds, hysteresis: Decimal
) -> Step:
    """Move ``metric`` from level ``armed`` (0: nothing sent) given its ``percent`` now.

    Rising past several levels at once sends each of them, lowest first. Falling re-arms the
    levels that usage fell clearly below (``hysteresis`` points under their threshold); falling
    clear of every level sends ``recovered``.
    """
    levels = (3, 2, 1) if metric.is_budget else (2, 1)
    reached = next((level for level in levels if percent >= thresholds.at(level)), 0)
    if reached > armed:
        return Step(reached, tuple(
            (LEVEL_KINDS[crossed], thresholds.at(crossed)) for crossed in range(armed + 1,
                                                                                reached + 1)))
    if reached == armed:
        return Step(armed)
    keep = next((level for level in range(armed, 0, -1)
                 if percent >= thresholds.at(level) - hysteresis), 0)
    if keep:
        return Step(keep)
    return Step(0, ((AlertKind.RECOVERED, thresholds.warning),))
