"""Measuring, reporting and writing: alternating rounds, goals, the results table, BENCHMARKS.md.

Machines here are noisy and small, so every overhead figure is measured against a baseline in
the same run: the variants of a case alternate round by round (in a rotating order, reversed
every other round), and a case's figure is the median over rounds of the per-round figure,
with its spread: the middle half of the rounds (first to third quartile); the full range
(min-max) is kept in results.json too.

A goal is data (:class:`Goal`): whether it is met is worked out from the measured value, and a
missed goal's cause is measured too (``cause=``, see ``_profile``), never written by hand.
"""

from __future__ import annotations

import gc
import operator
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "BENCHMARKS.md"
RESULTS: list[dict[str, Any]] = []
NOTES: list[str] = []
PEERS = ("openai", "httpx2", "opentelemetry-sdk", "opentelemetry-instrumentation-openai-v2",
         "opentelemetry-util-genai", "langchain-core", "litellm")

Spread = tuple[float, float, float, float]
"""First and third quartile, min and max of the per-round figures."""

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Goal:
    """``value <op> limit`` for every part; ``label`` names a limit measured in the run."""

    parts: tuple[tuple[str, float, str | None], ...]

    @classmethod
    def of(cls, op: str, limit: float, label: str | None = None) -> Goal:
        if op not in _OPS:
            raise ValueError(op)
        return cls(((op, limit, label),))

    def also(self, op: str, limit: float, label: str) -> Goal:
        return Goal((*self.parts, Goal.of(op, limit, label).parts[0]))

    def met(self, value: float) -> bool:
        return all(_OPS[op](value, limit) for op, limit, _ in self.parts)

    @property
    def text(self) -> str:
        return " and ".join(f"{op} {_limit(limit)}" if label is None
                            else f"{op} {label} ({_limit(limit)})"
                            for op, limit, label in self.parts)

    def best(self, spread: Spread) -> float:
        """The quartile nearest to meeting the goal."""
        return spread[0] if self.parts[0][0].startswith("<") else spread[1]


def _limit(limit: float) -> str:
    if float(limit).is_integer() and abs(limit) >= 1000:
        return f"{limit:,.0f}"
    return f"{limit:g}" if abs(limit) >= 100 else f"{limit:.2f}".rstrip("0").rstrip(".")


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()},"
            f" {platform.system()} {platform.release()}")


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def tree() -> str:
    """The quota_hooks being measured: its directory and, in a git work tree, the commit
    (``+changes`` when quota_hooks/ differs from it)."""
    import quota_hooks

    root = Path(quota_hooks.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "quota_hooks"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{root} at {commit or '?'}" + (" +changes in quota_hooks/" if dirty else "")


def peer_versions() -> dict[str, str]:
    versions = {}
    for name in PEERS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def report(name: str, value: float, unit: str, goal: Goal | None = None,
           spread: Spread | None = None, cause: Callable[[], str] | None = None) -> None:
    """One row. ``met`` comes from ``goal`` and ``value``; a miss runs ``cause`` (a profile
    of the case) for the row's cause."""
    ok = None if goal is None else goal.met(value)
    row: dict[str, Any] = {
        "benchmark": name, "value": round(value, 4), "unit": unit,
        "goal": "-" if goal is None else goal.text, "met": ok,
        "spread": None if spread is None else [round(s, 4) for s in spread[:2]],
        "range": None if spread is None else [round(s, 4) for s in spread[2:]]}
    if ok is False:
        found = []
        if spread is not None and goal is not None and goal.met(goal.best(spread)):
            shown = {"us": " µs", "x": "x"}.get(unit, f" {unit}")
            found.append(f"a quarter of the rounds or more meet the goal (quartile"
                         f" {_num(goal.best(spread))}{shown}): noise may account for part of"
                         f" the miss")
        if cause is not None:
            found.append(cause())
        row["cause"] = "; ".join(found) or "not profiled"
    RESULTS.append(row)
    print(f"{name:<66} {_num(value):>10} {unit:<6} {row['goal']:<24} {_mark(ok)}"
          f"{'' if spread is None else '  ' + _spread(spread)}", flush=True)
    if ok is False:
        print(f"    cause: {row['cause']}", flush=True)


def note(text: str) -> None:
    """A line for the notes of results.json and BENCHMARKS.md (a skipped case, a check)."""
    NOTES.append(text)
    print(f"  note: {text}", flush=True)


def header() -> None:
    print(f"{'benchmark':<66} {'value':>10} {'unit':<6} {'goal':<24} result  [spread]")


def _num(value: float) -> str:
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"


def _mark(ok: bool | None) -> str:
    return {True: "ok", False: "MISSED", None: "-"}[ok]


def _spread(spread: Sequence[float]) -> str:
    return f"[{_num(spread[0])} .. {_num(spread[1])}]"


def ab(base: Callable[[], None], other: Callable[[], None], n: int, rounds: int
       ) -> tuple[float, Spread]:
    """Median and spread of time(other) / time(base) over alternating rounds of n calls."""
    times = compare({"base": base, "other": other}, n, rounds)
    return ratio(times, "other", "base")


def compare(variants: Mapping[str, Callable[[], None]], n: int, rounds: int
            ) -> dict[str, list[float]]:
    """Seconds per call of each variant in each round: every round runs n calls of every
    variant, in an order that rotates by one each round and is reversed every other round, so
    that drift (GC generations, caches, a noisy neighbour) lands on all of them alike."""
    names = list(variants)
    for name in names:  # warm up
        for _ in range(max(1, n // 10)):
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            fn = variants[name]
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def spread_of(values: Sequence[float]) -> Spread:
    if len(values) < 2:
        return (values[0],) * 4 if values else (float("nan"),) * 4
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3, min(values), max(values)


def _stats(values: Sequence[float]) -> tuple[float, Spread]:
    return statistics.median(values), spread_of(values)


def ratio(times: Mapping[str, list[float]], name: str, base: str = "bare"
          ) -> tuple[float, Spread]:
    """time(name) / time(base), per round: median and spread."""
    return _stats([a / b for a, b in zip(times[name], times[base], strict=True)])


def overhead_us(times: Mapping[str, list[float]], name: str, base: str = "bare"
                ) -> tuple[float, Spread]:
    """time(name) - time(base) in microseconds per call, per round: median and spread."""
    return _stats([(a - b) * 1e6 for a, b in zip(times[name], times[base], strict=True)])


def per_call_us(times: Mapping[str, list[float]], name: str) -> tuple[float, Spread]:
    return _stats([t * 1e6 for t in times[name]])


def overhead_ratio(times: Mapping[str, list[float]], name: str, peer: str,
                   base: str = "bare") -> tuple[float, Spread]:
    """(time(name) - time(base)) / (time(peer) - time(base)): the ratio of the two median
    overheads, with the spread of the per-round ratios (over rounds where the peer's
    overhead came out positive)."""
    ours, theirs = overhead_us(times, name, base)[0], overhead_us(times, peer, base)[0]
    value = ours / theirs if theirs > 0 else float("inf")
    rounds = [(a - b) / (c - b) for a, c, b in zip(times[name], times[peer], times[base],
                                                   strict=True) if c > b]
    return value, spread_of(rounds) if rounds else (value,) * 4


def rates(block: Callable[[], int], blocks: int
          ) -> tuple[tuple[float, Spread], tuple[float, Spread]]:
    """Throughput of ``block`` (which returns how many items it handled), per block: per
    second of wall-clock time, and per second of the process's CPU time (every thread's:
    what the code costs, whatever else the machine is running)."""
    wall, cpu = [], []
    for _ in range(blocks):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        count = block()
        wall.append(count / (time.perf_counter() - start))
        cpu.append(count / max(time.process_time() - start_cpu, 1e-9))
    return _stats(wall), _stats(cpu)


# ---------------------------------------------------------------------- BENCHMARKS.md
_ABOUT = """\
Overheads are ratios (or differences) against a baseline measured in the same run: the
variants of a case alternate round by round, in a rotating order reversed every other round,
and each figure is the median over rounds; its spread is the middle half of the rounds (first
to third quartile; results.json also keeps min .. max as "range"). "bare again" is the
baseline measured a second time (an A/A pair): how far it is from 1.000x is the noise floor.
Throughputs are absolute: the median over blocks, with the same spread; the goal is judged on
wall-clock time, and the same blocks per CPU second of the process (all its threads) show what
the code costs whatever else the machine runs. A missed goal's cause
is measured in the same run: cProfile over the quota-hooks variant, counting quota-hooks' own
code and what it calls (not the calls it passes through to the SDK or transport), as shares
of that time; a memory goal's, tracemalloc by the line of quota-hooks that allocated."""


def _value(row: Mapping[str, Any]) -> str:
    unit = {"us": "µs"}.get(row["unit"], row["unit"])
    return f"{row['value']:.3f}x" if unit == "x" else f"{_num(row['value'])} {unit}"


def write_markdown(results: Mapping[str, Any], path: Path | None = None) -> Path:
    """BENCHMARKS.md from a results.json document: the table, the machine line, the peers'
    versions, the notes, and each miss with its measured cause."""
    path = path or DOC
    rows = results.get("results", [])
    peers = results.get("peers") or {}
    loads = results.get("load") or []
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks` from `benchmarks/results.json`; this run:"
        f" `{results.get('command', 'python -m benchmarks')}`"
        + (f", {results['started']}" if results.get("started") else "")
        + (f", {results['seconds'] / 60:.1f} min" if results.get("seconds") else "") + ".",
        "",
        f"Machine: {results.get('machine', '?')}"
        + (f"; load average {min(loads):.1f} .. {max(loads):.1f} during the run"
           if loads else "") + ".",
        "",
        f"Measured: {results.get('tree', '?')}.",
        "",
        "Peers: " + (", ".join(f"{k} {v}" for k, v in peers.items()) if peers else "-") + ".",
        "",
        _ABOUT,
        "",
        "| case | value | goal | met | spread |",
        "|---|---:|---|---|---|",
    ]
    for row in rows:
        spread = row.get("spread")
        lines.append(f"| {row['benchmark']} | {_value(row)} | {row['goal']} |"
                     f" {_mark(row['met'])} | {'' if spread is None else _spread(spread)} |")
    controls = [f"{row['benchmark'].split(':')[0]} {row['value']:.3f}x" for row in rows
                if "(A/A" in row["benchmark"] and row["unit"] == "x"]
    if controls:
        lines += ["", "Noise floor, the A/A pairs (bare against bare): " + ", ".join(controls)
                  + "."]
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [
            f"- {note['text'] if isinstance(note, dict) else note}" for note in notes]
    lines += ["", "## Misses", ""]
    misses = [row for row in rows if row.get("met") is False]
    for row in misses:
        lines.append(f"- **{row['benchmark']}**: {_value(row)} (goal {row['goal']}):"
                     f" {row.get('cause') or 'not profiled'}.")
    if not misses:
        lines.append("None.")
    path.write_text("\n".join(lines).replace("<=", "≤").replace(">=", "≥") + "\n")
    return path
