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
import math
from datetime import UTC, datetime
from itertools import compress
from operator import attrgetter, is_not

from ..usage import UsageRecord
from .base import UsageEntry

__all__ = ["decode", "encode", "utc_iso"]

_NAMES = tuple(UsageRecord.__dataclass_fields__)
_values = attrgetter(*_NAMES)
_DEFAULTS = _values(UsageRecord())
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
_AS_LIST = frozenset({"tags", "invalid_fields"})
_last_second: tuple[int, str] = (-1, "")


def utc_iso(when: float) -> str:
    """``datetime.fromtimestamp(when, UTC).isoformat()``, the text of each second made once
    (a writer stamps many records of one second): the microseconds rounded as ``datetime``
    rounds them (half to even), left out when there are none."""
    global _last_second
    if when < 0:
        return datetime.fromtimestamp(when, UTC).isoformat()
    fraction, whole = math.modf(when)
    micro, second = round(fraction * 1e6), int(whole)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    last, text = _last_second
    if last != second:
        text = datetime.fromtimestamp(second, UTC).isoformat().removesuffix("+00:00")
        _last_second = (second, text)
    return f"{text}.{micro:06d}+00:00" if micro else f"{text}+00:00"


def encode(entry: UsageEntry) -> str:
    """The stored form of ``entry``'s record, priced (its ``cost``/``price_source``) and
    timed (its ``timestamp``, else when it was recorded)."""
    record = entry.record
    values = _values(record)
    # Most fields hold their default object itself: only the others are compared.
    out = {name: value for name, value, default in compress(
        zip(_NAMES, values, _DEFAULTS, strict=True), map(is_not, values, _DEFAULTS))
        if value != default}
    for name in _AS_LIST.intersection(out):
        out[name] = list(out[name])
    if "reported_cost" in out:
        out["reported_cost"] = str(out["reported_cost"])
    stamp = record.timestamp
    out["timestamp"] = utc_iso(entry.when) if stamp is None else stamp.isoformat()
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
