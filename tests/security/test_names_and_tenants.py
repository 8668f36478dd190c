"""Attacks on the core by the names and the number of tenants: no name, however long, and no
number of distinct names makes a key, a status read or a WebSocket update grow without bound,
and distinct names stay distinct. Policies of a kind of scope apply; wrong arguments are
refused with the argument named."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable

import pytest

from quota_hooks import (
    ConfigurationError,
    Estimate,
    QuotaManager,
    QuotaPolicy,
    RateLimitedError,
    UsageRecord,
)
from quota_hooks.storage import Store
from quota_hooks.storage.base import MAX_BREAKDOWN_NAMES, OTHER
from quota_hooks.usage import MAX_NAME_LENGTH, bounded

HUGE = "m" * 10_000_000  # the 10 MB model name that made each status read 11.7 MiB


def test_a_10mb_model_name_keeps_the_status_small(store: Store) -> None:
    m = QuotaManager(QuotaPolicy.unlimited(), store=store)
    m.record(UsageRecord(workspace_id="ws", model=HUGE, input_tokens=5))
    m.record(UsageRecord(workspace_id="ws", model=HUGE[:-1] + "n", input_tokens=7))
    data = json.dumps(m.status("ws").to_dict())
    assert len(data) < 10_000, len(data)
    models = m.status("ws").enhanced_tracking.models_breakdown  # type: ignore[union-attr]
    assert len(models) == 2  # two names that differ only at their end stay two
    assert all(len(name) <= MAX_NAME_LENGTH for name in models)


@pytest.mark.parametrize("field", ["workspace_id", "api_method", "provider"])
def test_every_name_field_is_bounded(field: str) -> None:
    record = UsageRecord(**{field: "x" * 1_000_000})  # type: ignore[arg-type]
    kept = getattr(record, field)
    assert len(kept) == MAX_NAME_LENGTH and kept.startswith("x" * 100) and "~" in kept
    assert kept == bounded("x" * 1_000_000) != bounded("x" * 999_999)


def test_long_scopes_and_tags_are_bounded_too() -> None:
    record = UsageRecord(scopes={"user": "u" * 50_000}, tags=("t" * 50_000,))
    assert all(len(v) <= MAX_NAME_LENGTH for v in record.scopes.values())
    assert all(len(t) <= MAX_NAME_LENGTH for t in record.tags)


def test_distinct_models_beyond_the_cap_count_under_other(store: Store) -> None:
    m = QuotaManager(QuotaPolicy.unlimited(), store=store)
    for i in range(MAX_BREAKDOWN_NAMES + 50):
        m.record(UsageRecord(workspace_id="ws", model=f"model-{i}", api_method=f"method-{i}",
                             input_tokens=1))
    status = m.status("ws")
    models = status.enhanced_tracking.models_breakdown  # type: ignore[union-attr]
    methods = status.enhanced_tracking.api_methods_breakdown  # type: ignore[union-attr]
    assert OTHER in models and OTHER in methods
    assert len(models) <= MAX_BREAKDOWN_NAMES * 2 and len(methods) <= MAX_BREAKDOWN_NAMES * 2
    total = sum(row.request_count for row in models.values())
    assert total == MAX_BREAKDOWN_NAMES + 50  # nothing lost: the rest is in (other)
    assert status.requests_per_minute.current == MAX_BREAKDOWN_NAMES + 50


def test_a_default_policy_for_every_user_applies() -> None:
    """``"user:*"`` was accepted and ignored: every user passed its limit."""
    m = QuotaManager(QuotaPolicy.unlimited(),
                     scope_policies={"user:*": QuotaPolicy(rpm=2, mode="raise")})
    one = Estimate(model="gpt-4o-mini", input_tokens=1)
    for user in ("alice", "bob"):
        for _ in range(2):
            m.record(UsageRecord(workspace_id="ws", scopes={"user": user}),
                     m.acquire("ws", one, scopes={"user": user}))
        with pytest.raises(RateLimitedError, match="user:" + user):
            m.acquire("ws", one, scopes={"user": user})
    # A user's own policy wins over the default of the kind.
    own = QuotaManager(QuotaPolicy.unlimited(), scope_policies={
        "user:*": QuotaPolicy(rpm=1, mode="raise"), "user:vip": QuotaPolicy(rpm=5)})
    for _ in range(5):
        own.acquire("ws", one, scopes={"user": "vip"})


@pytest.mark.parametrize("value", [None, "a record", {"model": "gpt-4o"}, 42])
def test_a_wrong_record_is_refused_with_the_argument_named(value: object) -> None:
    m = QuotaManager()
    with pytest.raises(ConfigurationError, match="record must be a UsageRecord"):
        m.record(value)  # type: ignore[arg-type]


async def test_a_wrong_record_is_refused_async_too() -> None:
    with pytest.raises(ConfigurationError, match="record must be a UsageRecord"):
        await QuotaManager().arecord(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "named"), [
    (("ws", None), "estimate must be an Estimate"),
    (("", Estimate()), "workspace_id must be a non-empty string"),
    ((None, Estimate()), "workspace_id must be a non-empty string"),
])
def test_wrong_acquire_arguments_are_refused(args: tuple[object, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        QuotaManager().acquire(*args)  # type: ignore[arg-type]


def test_a_non_string_name_is_refused_with_the_field_named() -> None:
    with pytest.raises(ConfigurationError, match=r"UsageRecord\.model must be a string"):
        UsageRecord(model=None)  # type: ignore[arg-type]


def bytes_each(make: Callable[[int], None], *, warm: int, measured: int) -> float:
    """Bytes that each of ``measured`` more calls of ``make(i)`` keeps, after ``warm`` calls."""
    for i in range(warm):
        make(i)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(warm, warm + measured):
        make(i)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    return grown / measured


def test_an_idle_tenant_costs_a_few_kilobytes() -> None:
    """Before, a scope built 1,440 bucket lists up front: about 148 KiB per workspace."""
    m = QuotaManager(QuotaPolicy(rpm=1000, rpd=None, tpm=None, tpd=None,
                                 monthly_budget_usd=None))
    one = Estimate(model="gpt-4o-mini", input_tokens=10, output_tokens=10)

    def tenant(i: int) -> None:
        ws = f"ws-{i}"
        m.record(UsageRecord(workspace_id=ws, model="gpt-4o-mini", input_tokens=10),
                 m.acquire(ws, one))

    per_workspace = bytes_each(tenant, warm=50, measured=2_000)
    assert per_workspace < 5_000, per_workspace


def test_a_busy_end_user_costs_a_few_kilobytes() -> None:
    """One workspace, many end users: each user's scope keeps its last SCOPE_RECENT records,
    not 100 (2,000 users of 100 calls each took 176 MB before, about 88 KB per user)."""
    from quota_hooks.storage.memory import SCOPE_RECENT

    m = QuotaManager(QuotaPolicy.unlimited())

    def calls(user: int) -> None:
        for _ in range(100):
            m.record(UsageRecord(workspace_id="one", model="gpt-4o-mini", input_tokens=10,
                                 output_tokens=10, scopes={"user": f"u-{user}"}))

    per_user = bytes_each(calls, warm=20, measured=200)
    assert per_user < 24_000, per_user
    assert len(m.store.recent("user:u-5", 100)) == SCOPE_RECENT
    assert len(m.store.recent("workspace:one", 1_000)) == 100


def test_a_call_naming_thousands_of_scopes_is_charged_to_the_first_16() -> None:
    from quota_hooks.usage import MAX_SCOPES

    scopes = {f"k{i}": "v" for i in range(5_000)}
    m = QuotaManager(QuotaPolicy(rpm=10, rpd=None, tpm=None, tpd=None,
                                 monthly_budget_usd=None))
    held = m.acquire("w", Estimate(model="gpt-4o-mini", input_tokens=1, output_tokens=1),
                     scopes=scopes)
    record = UsageRecord(workspace_id="w", model="gpt-4o-mini", input_tokens=1,
                         scopes=scopes)
    assert len(record.scopes) == MAX_SCOPES == 16
    assert list(record.scopes) == [f"k{i}" for i in range(16)]
    assert set(held.scopes) == {"workspace:w", *(f"k{i}:v" for i in range(16))}
    m.record(record, held)
    assert len(m.store._scopes) == 17  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", [
    "redis://:CANARY-PW@127.0.0.1:6379/0?socket_timeout=nonsense",
    "rediss://user:CANARY-PW@example.invalid:notaport/0",
    "mysql://root:CANARY-PW@db/quota",
    "sqlite://:CANARY-PW@host/x.db",
])
def test_a_store_url_password_never_reaches_an_error(url: str) -> None:
    from quota_hooks.storage import store_from_url

    with pytest.raises(ConfigurationError) as caught:
        store_from_url(url)
    assert "CANARY-PW" not in str(caught.value)
    assert "CANARY-PW" not in repr(caught.value)


def test_a_redis_store_repr_names_no_password() -> None:
    from quota_hooks.storage.redis import RedisStore

    store = RedisStore.from_url("redis://:CANARY-PW@127.0.0.1:1/0")
    assert "CANARY-PW" not in repr(store) and "CANARY-PW" not in str(store)
