"""A record as stores keep it: compact JSON of the fields that differ from their defaults.

``{"workspace_id": "a", "model": "gpt-4o-mini", "input_tokens": 100, ..., "cost": "0.00012",
"timestamp": "2026-12-01T12:00:00+00:00"}``: the keys of :meth:`UsageRecord.to_dict
<quota_hooks.UsageRecord.to_dict>` as it writes them (the cost exact, a string; the time in
ISO 8601), with the fields at their defaults left out, which every version's ``from_dict``
reads: hosts of two versions can share a store. Built straight from an entry (its price and
time filled in) without copying the record. :func:`decode` reads it, and the full
``to_dict`` rows older versions wrote.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from operator import attrgetter

from ..usage import UsageRecord
from .base import UsageEntry

__all__ = ["decode", "encode"]

_NAMES = tuple(UsageRecord.__dataclass_fields__)
_values = attrgetter(*_NAMES)
_DEFAULTS = _values(UsageRecord())
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
_AS_LIST = frozenset({"tags", "invalid_fields"})


def encode(entry: UsageEntry) -> str:
    """The stored form of ``entry``'s record, priced (its ``cost``/``price_source``) and
    timed (its ``timestamp``, else when it was recorded)."""
    record = entry.record
    out = {name: value for name, value, default in zip(_NAMES, _values(record), _DEFAULTS,
                                                       strict=True)
           if value is not default and value != default}
    for name in _AS_LIST.intersection(out):
        out[name] = list(out[name])
    if "reported_cost" in out:
        out["reported_cost"] = str(out["reported_cost"])
    stamp = record.timestamp
    out["timestamp"] = (datetime.fromtimestamp(entry.when, UTC) if stamp is None
                        else stamp).isoformat()
    if entry.cost is not None:
        out["cost"] = str(entry.cost)
    else:
        out.pop("cost", None)
    if entry.price_source is not None:
        out["price_source"] = entry.price_source
    else:
        out.pop("price_source", None)
    return _encode(out)


def decode(text: str | bytes) -> UsageRecord:
    """The record of a stored row (this module's form, or an older full ``to_dict`` one)."""
    return UsageRecord.from_dict(json.loads(text))
