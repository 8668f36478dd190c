"""The manager's half that runs before a call: :meth:`Admission.acquire` reserves a call's
estimate against every enforced limit of its workspace and scopes (waiting for ``wait``
limits), :meth:`Admission.release` gives a reservation back.

:class:`Admission` is a base of :class:`~quota_hooks.manager.QuotaManager`, which holds the
state it reads. The admission is written once, as a flow of I/O steps
(:mod:`quota_hooks._flow`), carried out with the store's blocking or awaited reserve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._core import Core, Plan
from ._flow import Flow, arun, run
from .control import PolicySync
from .errors import QuotaExceededError, StorageError
from .storage.base import AsyncStore, Reservation, Store
from .typing import AsyncSleeper, Clock, Decision, Observer, Sleeper
from .usage import Estimate

__all__ = ["Admission"]

_MAX_WAIT_ROUNDS = 1000


class Admission:
    """Enforcement before a call: ``estimate``, ``acquire``/``aacquire`` and
    ``release``/``arelease`` of :class:`~quota_hooks.manager.QuotaManager`."""

    store: Store
    _astore: AsyncStore
    core: Core
    clock: Clock
    sleep: Sleeper
    asleep: AsyncSleeper
    fail_open_calls: int
    _sync: PolicySync
    _observers: tuple[Observer, ...]
    note_tracking_failure: Callable[..., None]

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
