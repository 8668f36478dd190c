"""The control plane: the policies every process sharing a store enforces, kept in the store.

:class:`PolicySync` keeps a manager's :class:`~quota_hooks.policy.Policies` in step with the
store's versioned policy table (:class:`~quota_hooks.storage.base.ControlStore`):

* a manager reads the table when it is made (:meth:`PolicySync.start`), so that no call is
  decided on the code's policies when the store has others;
* after that one daemon thread, ``quota-hooks-policies``, checks the table's version of every
  manager every ``policy_refresh`` seconds (0.5 by default) and reads the table only when it
  changed: a change made by ``quota-hooks policy set`` or another process is enforced
  within that, and no call waits for it. A store that keeps its data in this process
  (``blocking = False``, the memory store) is checked on the call's path instead: it costs a
  dict read;
* the policies given in code seed a store that never held a policy, once;
* a failed read keeps the policies in use, is logged once, and is tried again: every
  ``policy_refresh`` seconds until the first read succeeds, then after a back-off of up to
  :data:`MAX_BACKOFF` seconds, so that a store that is down does not slow every call twice;
* a table whose version went back (a store that lost its data, a file restored from a
  backup) is a new table, used as it is; and since such a store numbers from 1 again, one
  version can name two tables: the whole table is read after a failed read and every
  :data:`FULL_READ` seconds, and a table whose documents differ is used at the same version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from pydantic import ValidationError

from ._fork import renew_after_fork
from .alerts.model import Alert, AlertKind
from .errors import ConfigurationError, StorageError
from .metrics import METRICS
from .policy import Policies, QuotaPolicy, parse_policy, policy_key
from .pricing import format_usd, from_nanos
from .storage.base import (
    AsyncControlStore,
    AsyncStore,
    ControlStore,
    PolicyTable,
    StoredPolicy,
    budget_scope,
    scope_key,
    workspace_scope,
)
from .usage import bounded
from .windows import PERIODS, Period, month_key, period_key

__all__ = ["MAX_BACKOFF", "POLICY_REFRESH", "Administration", "ControlPlane", "PolicySync",
           "base_policy",
           "describe_policy", "history_scope", "merge_policy", "policy_json", "reading"]

logger = logging.getLogger("quota_hooks")

#: Seconds between two checks of the store's policy table version.
POLICY_REFRESH = 0.5
#: The longest wait before reading again after failed reads.
MAX_BACKOFF = 5.0
#: Seconds between two reads of the whole policy table (the others read its version only).
FULL_READ = 30.0
#: Rounds of read, change, write a policy update makes when other changes keep coming in.
_UPDATE_ROUNDS = 20


class PolicySync:
    """Keeps ``policies`` in step with ``store``'s policy table (see the module doc).

    Args:
        policies: the manager's policies (the code's, and the store's once read).
        store: the store, if it keeps policies.
        astore: its async face.
        clock: epoch seconds (for the time a policy was written).
        refresh: seconds between two checks of the table's version.
    """

    def __init__(self, policies: Policies, store: ControlStore | None, astore: AsyncStore,
                 clock: Callable[[], float], refresh: float = POLICY_REFRESH, *,
                 seed: bool = True,
                 on_seeded: Callable[[Mapping[str, str], int], None] | None = None) -> None:
        self.policies = policies
        self.store = store
        self._astore = cast(AsyncControlStore, astore)
        self.clock = clock
        self.refresh = refresh
        self._seed = (policies.code_documents() if seed and policies.explicit and store
                      else None)
        self._on_seeded = on_seeded
        self._inline = store is not None and getattr(store, "blocking", True) is False
        self._due = 0.0
        self._failures = 0
        self._read_once = False
        self._full_due = 0.0
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        renew_after_fork(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._reading = threading.Lock()

    def start(self) -> None:
        """The first read (seeding a new store), then the background checks."""
        if self.store is not None:
            self.read()
            _REFRESHER.add(self)

    def before_call(self) -> None:
        """On a call's path: a due check of an in-memory store (a dict read); nothing for
        other stores (the background thread checks them)."""
        if self._inline and time.monotonic() >= self._due:
            self.read()

    # ------------------------------------------------------------------ reads
    def read(self) -> None:
        """Read the table if it changed (seeding the store first if it is new). Never
        raises: a failure keeps the policies in use."""
        store = self.store
        if store is None:
            return
        with self._reading:  # one read at a time: a slow one never lands after a newer one
            self._due = time.monotonic() + self.refresh
            try:
                self._seed_store(store)
                table = store.policies(self._known())
            except Exception as exc:
                self._failed(exc)
                return
            self._read(table)

    def _seed_store(self, store: ControlStore) -> None:
        seed = self._seed
        if seed is None:
            return
        version = store.put_policies(seed, self.clock(), only_if_new=True)
        self._seed = None
        if version is not None and self._on_seeded is not None:
            self._on_seeded(seed, version)

    async def aread(self) -> None:
        """Async :meth:`read`."""
        if self.store is None:
            return
        self._due = time.monotonic() + self.refresh
        try:
            seed = self._seed
            if seed is not None:
                version = await self._astore.aput_policies(seed, self.clock(), only_if_new=True)
                self._seed = None
                if version is not None and self._on_seeded is not None:
                    self._on_seeded(seed, version)
            table = await self._astore.apolicies(self._known())
        except Exception as exc:
            self._failed(exc)
            return
        self._read(table)

    def due(self) -> bool:
        """True when the background thread should read now."""
        return not self._inline and time.monotonic() >= self._due

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._read_once:  # back off; until a first read, keep trying at the usual pace
            self._due = time.monotonic() + min(MAX_BACKOFF, self.refresh * 2 ** self._failures)
        logger.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                   "quota-hooks: reading the policies from %r failed (the policies in use "
                   "stay): %r", self.store, exc)

    def _known(self) -> int:
        """The version a read may skip the table at: the one in use, but -1 (read it all)
        after a failed read and every :data:`FULL_READ` seconds, because a store that lost
        its data numbers its versions from 1 again, and one version then names two tables."""
        now = time.monotonic()
        if self._failures or now >= self._full_due:
            self._full_due = now + FULL_READ
            return -1
        return self.policies.version

    def _read(self, table: PolicyTable | None) -> None:
        self._read_once = True
        if self._failures:
            logger.info("quota-hooks: the policies of %r are read again", self.store)
            self._failures = 0
        if table is not None:
            self.use(table)

    def use(self, table: PolicyTable) -> None:
        """Use ``table`` from now on (logging a stored policy that cannot be read, and, the
        first time, each stored policy that overrides a different one in code)."""
        with self._lock:
            current = self.policies.version
            if self.policies.holds(table):
                return
            if table.version < current:
                logger.warning(
                    "quota-hooks: the policy table of %r went back from version %d to %d (a "
                    "store that lost its data, or restored from a backup): using version %d",
                    self.store, current, table.version, table.version)
            first = current == 0
            bad = self.policies.use_stored(table)
        for what in bad:
            logger.warning("quota-hooks: the stored policy %s could not be read in full; what "
                           "could not is left out (quota-hooks policy set or delete fixes it)",
                           what)
        if first and self.policies.explicit:
            for key, stored in table.policies.items():
                mine = self.policies.code_policy(key)
                if mine is not None and mine.model_dump_json() != stored.document:
                    logger.warning(
                        "quota-hooks: the store's policy %r (version %d) differs from the one "
                        "given in code; the store's is enforced (quota-hooks policy set or "
                        "delete changes it)", key, stored.version)

    # ------------------------------------------------------------------ writes
    def put(self, changes: Mapping[str, QuotaPolicy | None]) -> int:
        """Store ``changes`` (``None`` deletes a key) in one new table version, and use the
        table at once. Raises on a store failure."""
        documents = {key: None if p is None else p.model_dump_json()
                     for key, p in changes.items()}
        return self._write(lambda table: documents)

    def update(self, key: str, fields: Mapping[str, Any], *,
               names: Mapping[str, str] | None = None) -> tuple[int, QuotaPolicy]:
        """Change some ``fields`` of the stored policy ``key`` (starting from
        :func:`base_policy` when it has none), from the table as it is now: a change made
        meanwhile by another process is read again and kept, never overwritten. Returns the
        version and the policy. Raises :class:`ConfigurationError` for a bad field, naming it
        as ``names`` says."""
        found: list[QuotaPolicy] = []

        def change(table: PolicyTable) -> dict[str, str | None]:
            policy = merge_policy(base_policy(table, key), fields, names=names)
            found[:] = [policy]
            return {key: policy.model_dump_json()}

        version = self._write(change)
        return version, found[0]

    def _write(self, change: Callable[[PolicyTable], Mapping[str, str | None]]) -> int:
        store = self.store
        assert store is not None
        self._seed_store(store)  # the code's policies first, if the store is new
        for _ in range(_UPDATE_ROUNDS):
            table = store.policies()
            assert table is not None
            version = store.put_policies(change(table), self.clock(),
                                         expect_version=table.version)
            if version is not None:
                self.read()
                return version
        raise ConfigurationError(f"the policies of {store!r} kept changing while this change "
                                 f"was made ({_UPDATE_ROUNDS} tries); nothing was written")

    def close(self) -> None:
        """Stop refreshing."""
        _REFRESHER.discard(self)


_PERIOD_ORDER = {"day": 0, "week": 1, "month": 2}


def describe_policy(policy: QuotaPolicy) -> str:
    """A policy's limits in one line: ``"rpm 10, rpd 10000, ..., budget $100.00/month"``."""
    parts = []
    # The rate limits, then the budgets from the shortest period to the longest.
    for m in sorted(METRICS, key=lambda m: (m.is_budget, _PERIOD_ORDER.get(str(m.period), 0))):
        limit = m.limit(policy)
        if limit is None and m.period in ("day", "week"):
            continue  # not set: no day or week budget is the default
        shown = "unlimited" if limit is None else (
            f"{format_usd(limit)}/{m.period}" if m.is_budget else f"{limit}")
        parts.append(f"{'budget' if m.is_budget else m.name} {shown}")
    if policy.mode is not None:
        parts.append(f"mode {policy.mode}")
    if policy.modes:
        parts.append("modes " + ",".join(f"{k}={v}" for k, v in sorted(policy.modes.items())))
    if policy.timezone != "UTC":
        parts.append(f"timezone {policy.timezone}")
    if policy.thresholds is not None:
        parts.append("thresholds " + "/".join(f"{t:g}" for t in policy.thresholds))
    return ", ".join(parts)


def merge_policy(base: QuotaPolicy, changes: Mapping[str, Any], *,
                 names: Mapping[str, str] | None = None) -> QuotaPolicy:
    """``base`` with the fields of ``changes`` replaced, validated.

    Raises:
        ConfigurationError: an unknown field or a bad value, naming it (as ``names`` calls
            it: ``{"monthly_budget_usd": "--budget"}``) and the value.
    """
    names = names or {}
    unknown = sorted(set(changes) - set(QuotaPolicy.model_fields))
    if unknown:
        raise ConfigurationError(f"unknown policy field(s) {unknown}; use "
                                 f"{sorted(QuotaPolicy.model_fields)}")
    data = base.model_dump()
    data.update(changes)
    try:
        return QuotaPolicy(**data)
    except ValidationError as exc:
        parts = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]) or "policy"
            shown = names.get(field, field)
            value = changes.get(field, error.get("input"))
            parts.append(f"{shown}={value!r}: {error['msg']}")
        raise ConfigurationError("invalid policy: " + "; ".join(parts)) from None


def policy_json(key: str, stored: StoredPolicy) -> dict[str, Any]:
    """A stored policy as the CLI and the REST API show it: the policy this version
    enforces, and the fields it could not read (``"unreadable"``), if any."""
    shown: dict[str, Any] = {
        "key": key,
        "version": stored.version,
        "updated_at": datetime.fromtimestamp(stored.updated_at, UTC).isoformat().replace(
            "+00:00", "Z"),
    }
    dropped: list[str] = []
    try:
        shown["policy"] = parse_policy(stored.document, source=f"stored policy {key!r}",
                                       dropped=dropped).model_dump(mode="json")
    except ConfigurationError as exc:
        shown["policy"] = None
        dropped.append(str(exc))
    if dropped:
        shown["unreadable"] = dropped
    return shown


def base_policy(table: PolicyTable, key: str) -> QuotaPolicy:
    """What a change to ``key`` starts from: its stored policy; else, for a workspace (or
    ``*``), the store's ``*``, else the seed defaults and ``OPENAI_*`` variables; for a scope
    ``kind:value``, the store's ``kind:*``, else no limit at all (a scope without a policy
    is not limited)."""
    found = table.policies.get(key)
    if found is None:
        kind, _, value = key.partition(":")
        if key == "*" or kind == "workspace":
            found = table.policies.get("*")
            if found is None:
                return QuotaPolicy.from_env()
        else:
            found = table.policies.get(f"{kind}:*") if value != "*" else None
            if found is None:
                return QuotaPolicy.unlimited()
    return parse_policy(found.document, source=f"stored policy {key!r}")


def history_scope(key: str) -> str:
    """Where changes to the policy or usage of ``key`` are kept: a workspace's in its alert
    history, a scope's in its own (``team:ml``), the default's in ``policy:*``; never in the
    history of a workspace that happens to be called ``team:ml`` or ``*``."""
    kind, _, value = key.partition(":")
    if kind == "workspace":
        return workspace_scope(value)
    return "policy:*" if key == "*" else key


class _Refresher:
    """One daemon thread for every :class:`PolicySync` of the process (held weakly)."""

    TICK = 0.1

    def __init__(self) -> None:
        self._syncs: weakref.WeakSet[PolicySync] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, sync: PolicySync) -> None:
        if sync.store is None or sync._inline:
            return
        with self._lock:
            self._syncs.add(sync)
            self._start()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="quota-hooks-policies",
                                            daemon=True)
            self._thread.start()

    def _after_fork_in_child(self) -> None:
        """A child process after ``fork()``: its own thread checks the policies."""
        self._lock = threading.Lock()
        self._thread = None
        if self._syncs:
            self._start()

    def discard(self, sync: PolicySync) -> None:
        with self._lock:
            self._syncs.discard(sync)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            with self._lock:
                syncs = list(self._syncs)
            for sync in syncs:
                if sync.due():
                    sync.read()
            del syncs


_REFRESHER = _Refresher()
renew_after_fork(_REFRESHER)


@contextlib.contextmanager
def reading(what: str, name: str) -> Iterator[None]:
    """Store calls of one operation: any failure is a :class:`StorageError` naming it (a
    :class:`ConfigurationError` passes as it is)."""
    try:
        yield
    except (StorageError, ConfigurationError):
        raise
    except Exception as exc:
        raise StorageError(f"reading the {what} of {name!r} failed: {exc}") from exc


class ControlPlane:
    """The admin side of a manager's store: stored policies, usage resets, and the alert
    history that keeps every change (``manager.put_policies`` and friends call it).

    Args:
        sync: the manager's policy sync.
        store: the store, if it keeps a control plane.
        astore: its async face.
        clock: epoch seconds.
        publish: sends an admin's change to the sinks and live listeners.
        changed: tells live listeners that a workspace (or scope) changed.
        history: alerts kept per scope (0: none).
    """

    def __init__(self, sync: PolicySync, store: ControlStore | None, astore: AsyncStore,
                 clock: Callable[[], float], publish: Callable[[Alert], None],
                 changed: Callable[[str], None], history: int) -> None:
        self.sync = sync
        self.store = store
        self._astore = cast(AsyncControlStore, astore)
        self.clock = clock
        self._publish = publish
        self._changed = changed
        self.history = history

    def need(self, what: str) -> ControlStore:
        """The store, or a :class:`ConfigurationError` saying that ``what`` needs one that
        keeps a control plane."""
        if self.store is None:
            raise ConfigurationError(f"{what} needs a store that keeps policies; this one "
                                     "does not")
        return self.store

    # ------------------------------------------------------------------ policies
    def put(self, changes: Mapping[str, QuotaPolicy | None], by: str) -> int:
        """See :meth:`quota_hooks.QuotaManager.put_policies`."""
        self.need("storing policies")
        for key, policy in changes.items():
            if policy is not None and not isinstance(policy, QuotaPolicy):
                raise ConfigurationError(
                    f"policies[{key!r}] must be a QuotaPolicy or None, got "
                    f"{type(policy).__name__}")
        keys = {policy_key(key): policy for key, policy in changes.items()}
        with reading("policies", ", ".join(keys)):
            version = self.sync.put(keys)
        for key, policy in keys.items():
            self.policy_changed(key, policy, version, by)
        return version

    def update(self, name: str, fields: Mapping[str, Any], by: str,
               names: Mapping[str, str] | None) -> tuple[int, QuotaPolicy]:
        """See :meth:`quota_hooks.QuotaManager.update_policy`."""
        self.need("storing policies")
        key = policy_key(name)
        with reading("policies", key):
            version, policy = self.sync.update(key, fields, names=names)
        self.policy_changed(key, policy, version, by)
        return version, policy

    def table(self) -> PolicyTable:
        """The store's policy table, read now."""
        store = self.need("reading stored policies")
        with reading("policies", "*"):
            table = store.policies()
        assert table is not None
        return table

    def policy_changed(self, key: str, policy: QuotaPolicy | None, version: int,
                       by: str) -> None:
        """Keep (and send) a policy change."""
        self.note(AlertKind.POLICY_CHANGED, key, (
            f"The policy of {key} was {'deleted' if policy is None else 'set'} by {by} "
            f"(policy version {version})" + ("" if policy is None else
                                             f": {describe_policy(policy)}") + "."))

    def seeded(self, documents: Mapping[str, str], version: int) -> None:
        """The code's policies seeded a new store: said in each key's history (not sent to
        the sinks: every first start of an app would)."""
        for key in documents:
            try:
                self.note(AlertKind.POLICY_CHANGED, key, (
                    f"The policy of {key} was seeded from the code of process {os.getpid()} "
                    f"(policy version {version}): the store held no policy."), publish=False)
            except Exception as exc:  # the seed is written; only its note failed
                logger.warning("quota-hooks: keeping the seed of policy %r in the history "
                               "failed: %r", key, exc)

    # ------------------------------------------------------------------ usage reset
    def reset(self, name: str, by: str, period: str = "month") -> Decimal:
        """See :meth:`quota_hooks.QuotaManager.reset_usage`."""
        store = self.need("resetting usage")
        if period not in PERIODS:
            raise ConfigurationError(f"period must be day, week or month, got {period!r}")
        key = policy_key(name)
        kind, _, value = key.partition(":")
        if key == "*" or value == "*":
            raise ConfigurationError(f"reset one workspace or scope at a time, not {name!r}")
        scope = (workspace_scope(value) if kind == "workspace"
                 else scope_key(bounded(kind), bounded(value)))
        now = self.clock()
        if period == "month":
            # A scope's month is its calls' (each workspace's zone): the month of now in
            # every zone, which is one month, or two near a month's start.
            names = sorted({month_key(now, "Etc/GMT+12"), month_key(now, "Etc/GMT-14")})
            scopes = [(scope, m) for m in names]
        else:
            # A day or week budget is kept in the zone of the scope's own policy.
            policies = self.sync.policies
            policy = (policies.for_workspace(value) if kind == "workspace"
                      else policies.for_scope(kind, value))
            if policy is None or policy.budget(period) is None:
                raise ConfigurationError(f"{key} has no {period} budget: nothing to reset")
            names = [period_key(now, cast(Period, period), policy.timezone)]
            scopes = [(budget_scope(scope, names[0]), names[0])]
        with reading("usage", key):
            found = [store.reset_budget(s, m, now) for s, m in scopes]
        if all(taken is None for taken in found):
            raise ConfigurationError(f"{key} has no usage in {' or '.join(names)}: nothing to "
                                     "reset (a typo?)")
        taken = from_nanos(sum(t or 0 for t in found))
        shown = "/".join(m for m, t in zip(names, found, strict=True) if t is not None)
        self.note(AlertKind.USAGE_RESET, key, (
            f"The {shown} budget of {key} was reset by {by}: {format_usd(taken)} charged this "
            f"{period} no longer counts against it (the breakdowns and history keep it)."))
        self._changed(value if kind == "workspace" else key)
        return taken

    # ------------------------------------------------------------------ the history
    def note(self, kind: AlertKind, key: str, message: str, *, publish: bool = True) -> Alert:
        """See :meth:`quota_hooks.QuotaManager.note_admin_action`."""
        now = self.clock()
        workspace = key.partition(":")[2] if key.startswith("workspace:") else key
        alert = Alert(kind=kind, workspace_id=workspace, scope=history_scope(key),
                      message=message, at=datetime.fromtimestamp(now, UTC),
                      dedupe_key=f"admin:{key}:{kind.value}:{now!r}")
        if self.store is not None and self.history:
            with reading("alert history", workspace):
                self.store.append_alert(alert.scope, alert.model_dump_json(), now, self.history)
        if publish:
            self._publish(alert)
        return alert

    def history_of(self, key: str, n: int) -> list[Alert]:
        """See :meth:`quota_hooks.QuotaManager.history_of`."""
        if self.store is None or n <= 0:
            return []
        with reading("alert history", key):
            rows = self.store.alert_history(history_scope(key), n)
        return _alerts(rows)

    async def ahistory_of(self, key: str, n: int) -> list[Alert]:
        """Async :meth:`history_of`."""
        if self.store is None or n <= 0:
            return []
        with reading("alert history", key):
            rows = await self._astore.aalert_history(history_scope(key), n)
        return _alerts(rows)


def _alerts(rows: Iterable[str]) -> list[Alert]:
    """Kept alerts, parsed; one this version cannot read (a newer kind) is left out."""
    alerts = []
    for row in rows:
        try:
            alerts.append(Alert.model_validate_json(row))
        except ValueError:
            continue
    return alerts


class Administration:
    """The control plane of :class:`~quota_hooks.manager.QuotaManager`: its policies in the
    store (shared by every process), usage resets and the alert history that keeps every
    change. The work is :class:`ControlPlane`'s and :class:`PolicySync`'s."""

    policies: Policies
    _control: ControlStore | None
    _admin: ControlPlane
    _sync: PolicySync

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
