"""The stored form of a record (storage/_rows.py): sparse, exact, and readable by every
version's ``UsageRecord.from_dict``: each key and value is what ``to_dict`` writes, so hosts of
two versions can share one SQLite file or Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.storage._rows import decode, encode, utc_iso

pytestmark = pytest.mark.unit

RECORDS = [
    UsageRecord(workspace_id="w", model="gpt-4o", input_tokens=10, output_tokens=3),
    UsageRecord(workspace_id="w", model="gpt-4o", input_tokens=1_000, cached_input_tokens=512,
                output_tokens=30, reasoning_tokens=20, tags=("a", "b"), scopes={"user": "u"},
                timestamp=datetime(2026, 11, 30, 23, 59, 59, 123_456, tzinfo=UTC),
                cost=Decimal("0.000123456789"), price_source="provided", success=False,
                status_code=429, error_type="rate_limited", stream=True, attempt=2),
    UsageRecord(workspace_id="ü🚀", model="nobody-prices-me", input_tokens=-1,
                output_tokens=5),  # an invalid field, flagged
    UsageRecord(workspace_id="w", model="gpt-image-1", input_tokens=60, output_tokens=6_240,
                image_output_tokens=6_240, images=1, image_size="1024x1024"),
]


@pytest.mark.parametrize("record", RECORDS)
def test_a_row_is_a_part_of_to_dict_and_reads_back(record: UsageRecord) -> None:
    manager = QuotaManager(QuotaPolicy.unlimited())
    entry = manager.core.entry(record, None, manager.clock())
    row = json.loads(encode(entry))
    priced = record.with_cost(entry.cost, entry.price_source,
                              record.timestamp or datetime.fromtimestamp(entry.when, UTC))
    full = priced.to_dict()
    assert {key: full[key] for key in row} == row  # what to_dict writes, key by key
    left_out = set(full) - set(row)
    defaults = UsageRecord().to_dict()
    assert all(full[key] == defaults[key] for key in left_out)
    assert decode(encode(entry)) == priced
    assert UsageRecord.from_dict(full) == priced  # the older, full rows still read


def test_a_record_time_is_written_as_datetime_writes_it() -> None:
    """The stamp of a record without a timestamp is made without a datetime per record:
    exactly datetime's text, microseconds rounded half to even (a tie at x.9999995 s carries
    into the next second), none shown when there are none."""
    import random

    base = 1_764_600_000
    ties = [base + k / 2_000_000 for k in range(-3_000, 3_000)]  # every half microsecond
    rng = random.Random(17)
    moments = [0.0, 59.0, float(base), base + 0.9999995, base + 0.9999994, base + 0.0000005,
               base + 0.0000015, 2**31 + 0.5, -1.25, *ties,
               *(rng.uniform(0, 4e9) for _ in range(20_000))]
    for when in moments:
        assert utc_iso(when) == datetime.fromtimestamp(when, UTC).isoformat(), when
