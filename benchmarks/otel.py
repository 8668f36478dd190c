"""What ``quota_hooks.otel.instrument()`` adds to ``record()``: ``python -m benchmarks.otel``.

Two managers on memory stores, one instrumented (the real OpenTelemetry SDK, an
``InMemoryMetricReader``), record the same calls in alternating rounds (the order flips every
round); the figure is the median over rounds of the per-record difference, with the ratio to
the baseline measured in the same run.

The goal (issue 20) is on the call's path: at most 5 us per record. The SDK's own work happens
when the metrics are collected, on the collector's thread; it is measured apart (``flush``
per record) and printed too, so that nothing is hidden: it is what each call costs the
process in all, once per collection.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from quota_hooks import QuotaManager, QuotaPolicy, UsageRecord
from quota_hooks.otel import instrument

GOAL_US = 5.0


def _records(n: int) -> list[UsageRecord]:
    return [UsageRecord(workspace_id=f"ws-{i % 5}", model="gpt-4o-mini", input_tokens=100 + i % 7,
                        output_tokens=20 + i % 3, latency_ms=120.0 + i % 11)
            for i in range(n)]


def _time(manager: QuotaManager, records: list[UsageRecord]) -> float:
    record = manager.record
    started = time.perf_counter()
    for item in records:
        record(item)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.otel", description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=1000,
                        help="records per round (below max_pending, so no flush runs inside)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 300")
    args = parser.parse_args(argv)
    rounds, per_round = (3, 300) if args.quick else (args.rounds, args.per_round)
    if os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN"):
        print(f"OTEL_SEMCONV_STABILITY_OPT_IN={os.environ['OTEL_SEMCONV_STABILITY_OPT_IN']}")

    policy = QuotaPolicy.unlimited()
    baseline = QuotaManager(policy)
    instrumented = QuotaManager(policy)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel = instrument(instrumented, provider, workspace_attribute=True,
                      max_pending=per_round + 1)
    records = _records(per_round)
    for manager in (baseline, instrumented):  # warm up: prices compiled, attribute sets built
        _time(manager, records[:100])
    otel.flush()

    base_us: list[float] = []
    extra_us: list[float] = []
    flush_us: list[float] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(rounds):
            order = [(baseline, base_us), (instrumented, extra_us)]
            if i % 2:
                order.reverse()
            for manager, out in order:
                out.append(_time(manager, records) / per_round * 1e6)
            started = time.perf_counter()
            otel.flush()
            reader.get_metrics_data()
            flush_us.append((time.perf_counter() - started) / per_round * 1e6)
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    diffs = [b - a for a, b in zip(base_us, extra_us, strict=True)]
    ratios = [b / a for a, b in zip(base_us, extra_us, strict=True)]
    overhead = statistics.median(diffs)
    ratio = statistics.median(ratios)
    deferred = statistics.median(flush_us)
    print(f"record() memory, uninstrumented: {statistics.median(base_us):.2f} us/record")
    print(f"record() memory, instrument()ed: {statistics.median(extra_us):.2f} us/record")
    print(f"instrument() on the call's path: {overhead:+.2f} us/record "
          f"(spread {min(diffs):+.2f} .. {max(diffs):+.2f}); ratio {ratio:.3f} x "
          f"(spread {min(ratios):.3f} .. {max(ratios):.3f}); goal <= {GOAL_US:g} us: "
          f"{'met' if overhead <= GOAL_US else 'MISSED'}")
    print(f"deferred to the collection (the SDK's histograms, pricing, counters): "
          f"{deferred:.2f} us/record, on the collector's thread")
    print(f"{rounds} rounds of {per_round} records, alternating; Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cores")
    otel.uninstrument()
    return 0 if overhead <= GOAL_US else 1


if __name__ == "__main__":
    raise SystemExit(main())
