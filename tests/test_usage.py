from __future__ import annotations

import dataclasses
import logging
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from quota_hooks import UsageRecord
from quota_hooks.usage import MAX_COST, Estimate, reported_usage, storable

pytestmark = pytest.mark.unit


def test_total_defaults_to_input_plus_output() -> None:
    record = UsageRecord(input_tokens=10, output_tokens=5)
    assert record.total_tokens == 15
    assert record.invalid_fields == ()


def test_record_is_frozen_and_slotted() -> None:
    record = UsageRecord()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.input_tokens = 3  # type: ignore[misc]
    assert not hasattr(record, "__dict__")


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, 2.5, 2**40 + 1, "12", True, object()])
def test_untrusted_counts_become_zero_with_a_flag_and_one_warning(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="quota_hooks"):
        record = UsageRecord(input_tokens=bad, output_tokens=7)  # type: ignore[arg-type]
    assert record.input_tokens == 0
    assert record.output_tokens == 7
    assert record.total_tokens == 7
    assert record.invalid_fields == ("input_tokens",)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "input_tokens" in warnings[0].getMessage()


def test_integral_float_and_none_are_accepted() -> None:
    record = UsageRecord(input_tokens=12.0, output_tokens=None)  # type: ignore[arg-type]
    assert record.input_tokens == 12 and type(record.input_tokens) is int
    assert record.output_tokens == 0
    assert record.invalid_fields == ()


def test_sub_counts_never_exceed_their_totals() -> None:
    record = UsageRecord(
        input_tokens=100, cached_input_tokens=150, output_tokens=20, reasoning_tokens=30
    )
    assert record.cached_input_tokens == 100
    assert record.reasoning_tokens == 20
    assert set(record.invalid_fields) == {"cached_input_tokens", "reasoning_tokens"}


def test_total_smaller_than_parts_is_not_trusted() -> None:
    record = UsageRecord(input_tokens=100, output_tokens=20, total_tokens=50)
    assert record.total_tokens == 120
    assert record.invalid_fields == ("total_tokens",)


def test_bad_cost_is_dropped_never_credited() -> None:
    record = UsageRecord(cost=Decimal("-5"))
    assert record.cost is None and record.invalid_fields == ("cost",)
    assert UsageRecord(cost=0.25).cost == Decimal("0.25")  # type: ignore[arg-type]
    assert UsageRecord(cost=math.nan).cost is None  # type: ignore[arg-type]


def test_timestamps_are_utc() -> None:
    naive = UsageRecord(timestamp=datetime(2026, 1, 1, 12, 0))
    assert naive.timestamp.tzinfo is UTC
    plus2 = timezone(timedelta(hours=2))
    shifted = UsageRecord(timestamp=datetime(2026, 1, 1, 12, 0, tzinfo=plus2))
    assert shifted.timestamp == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert shifted.timestamp.tzinfo is UTC


def test_to_dict_is_json_ready_and_has_no_payload_fields() -> None:
    record = UsageRecord(model="gpt-4o", input_tokens=3, cost=Decimal("0.1"), tags=("a",))
    data = record.to_dict()
    assert data["cost"] == "0.1" and data["tags"] == ["a"]
    assert not {"prompt", "messages", "completion", "api_key"} & set(data)


def test_a_cost_over_max_cost_is_not_trusted() -> None:
    assert UsageRecord(cost=MAX_COST).cost == MAX_COST
    record = UsageRecord(cost=MAX_COST + 1)
    assert record.cost is None
    assert record.invalid_fields == ("cost",)


def test_names_are_made_storable_and_left_alone_otherwise() -> None:
    plain = "équipe-東京"
    assert storable(plain) is plain
    assert storable("a\udcffb") == "a\\udcffb"
    record = UsageRecord(workspace_id="ws\ud800", model="gpt\udc80", tags=("t\udc81",),
                         scopes={"team\udc82": "x\udc83"})
    assert record.workspace_id == "ws\\ud800"
    assert record.model == "gpt\\udc80"
    assert record.tags == ("t\\udc81",)
    assert record.scopes == {"team\\udc82": "x\\udc83"}
    for text in (record.workspace_id, record.model, *record.tags):
        text.encode("utf-8")  # every store can encode it now


def test_a_fast_constructor_builds_the_same_frozen_object() -> None:
    from quota_hooks.storage.base import Reservation, UsageDelta
    from quota_hooks.usage import fast_constructor

    new_delta = fast_constructor(UsageDelta)
    made = new_delta(1, 120, 27, 1, 0, 0, 5)
    assert type(made) is UsageDelta and made == UsageDelta(1, 120, 27, 1, 0, 0, 5)
    assert hash(made) == hash(UsageDelta(1, 120, 27, 1, 0, 0, 5))
    assert new_delta(tokens=3) == UsageDelta(tokens=3)  # defaults and keywords as the class's
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.tokens = 0  # type: ignore[misc]
    held = fast_constructor(Reservation)("r-1", ("workspace:a",), made, 1.0, "2026-01", 2.0)
    assert held == Reservation("r-1", ("workspace:a",), made, 1.0, "2026-01", 2.0)
    assert held.limits == {} and held.limits is not fast_constructor(Reservation)(
        "r-2", (), made, 1.0, "2026-01", 2.0).limits  # a default factory, called per object

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            assert self.value >= 0

    with pytest.raises(TypeError, match="no mutable twin"):
        fast_constructor(Checked)  # its __post_init__ would be skipped


def test_reported_usage_makes_the_estimate_only_when_the_rule_needs_it() -> None:
    made: list[int] = []

    def estimate() -> Estimate:
        made.append(1)
        return Estimate(model="gpt-4o-mini", input_tokens=40, output_tokens=300)

    trusted = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    assert reported_usage(trusted, estimate) == trusted and made == []
    # untrusted, null output, and none at all: the estimate is made (once each)
    fields = reported_usage({"input_tokens": -3, "output_tokens": 5}, estimate)
    assert (fields["input_tokens"], fields["output_tokens"], fields["estimated"]) == (40, 300,
                                                                                      True)
    assert reported_usage({"input_tokens": 12, "output_tokens": None},
                          estimate)["output_tokens"] == 300
    assert reported_usage(None, estimate)["input_tokens"] == 40
    assert len(made) == 3
