"""The few, typed errors quota-hooks raises.

Everything derives from :class:`QuotaHooksError`, so ``except QuotaHooksError`` catches every
error of ours and nothing of the caller's.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "QuotaExceededError",
    "QuotaHooksError",
    "RateLimitedError",
    "StorageError",
]


class QuotaHooksError(Exception):
    """Base class of every error raised by quota-hooks."""


class ConfigurationError(QuotaHooksError, ValueError):
    """A setting, environment variable or argument has a bad value.

    The message names the field and the value, e.g.
    ``OPENAI_RATE_LIMIT_PER_MINUTE='fast': not a whole number``.
    """


class StorageError(QuotaHooksError):
    """The usage store failed (unreachable, corrupt, or refused the operation)."""


class QuotaExceededError(QuotaHooksError):
    """An enforced limit refused a call before it was sent.

    Attributes:
        scope: the scope whose limit was hit, e.g. ``"workspace:ws-1"`` or ``"team:ml"``.
        limit: the metric that was hit: ``rpm``, ``rpd``, ``tpm``, ``tpd`` or
            ``monthly_budget_usd``.
        used: the usage already counted against that limit, in the limit's unit.
        maximum: the configured limit.
        retry_after: seconds until the call could succeed, or ``None`` if it cannot before the
            period ends.
    """

    def __init__(
        self,
        scope: str,
        limit: str,
        used: float,
        maximum: float,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        self.scope = scope
        self.limit = limit
        self.used = used
        self.maximum = maximum
        self.retry_after = retry_after
        if message is None:
            message = f"{scope}: {limit} limit reached ({used:g} of {maximum:g} used)"
            if retry_after is not None:
                message += f"; retry after {retry_after:.1f}s"
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.scope, self.limit, self.used, self.maximum, self.retry_after, str(self)),
        )


class RateLimitedError(QuotaExceededError):
    """A per-minute or per-day limit (rpm, rpd, tpm, tpd) refused a call."""
