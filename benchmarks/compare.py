"""A before/after table of results.json files, in Markdown.

    python -m benchmarks.compare --before B1.json [B2.json ...] --after A1.json [A2.json ...]
                                 [--all] [-o OUT.md]

By default only the cases with a goal are listed (``--all``: every case both sides have).
Each run's figure is the one it measured against its own baselines; with several runs a side,
the table shows their median and, in brackets, each run's figure. Throughputs and memory are
absolute, so each run's load average is listed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from ._harness import Goal, _num


def _value(value: float, unit: str) -> str:
    return f"{value:.3f}x" if unit == "x" else f"{_num(value)} {'µs' if unit == 'us' else unit}"


def _side(runs: list[dict[str, Any]], name: str) -> tuple[float, str, list[float]] | None:
    rows = [row for run in runs for row in run.get("results", []) if row["benchmark"] == name]
    if not rows:
        return None
    values = [row["value"] for row in rows]
    return statistics.median(values), rows[0]["unit"], values


def _shown(side: tuple[float, str, list[float]]) -> str:
    value, unit, values = side
    text = _value(value, unit)
    if len(values) > 1:
        text += " (" + ", ".join(_num(v) for v in values) + ")"
    return text


def _change(before: tuple[float, str, list[float]], after: tuple[float, str, list[float]]
            ) -> str:
    (a, unit_a, _), (b, unit_b, _) = before, after
    if unit_a != unit_b or not a:
        return "-"
    return f"{b - a:+.3f}x" if unit_b == "x" else f"{(b - a) / abs(a):+.0%}"


def _goal(row: dict[str, Any]) -> Goal | None:
    """The goal of a row, rebuilt from its text (so that a median is judged by the same
    rule); None for a goal that names a figure of its own run (``< OTel ...``)."""
    parts = []
    for part in str(row.get("goal", "-")).split(" and "):
        op, _, limit = part.partition(" ")
        try:
            parts.append((op, float(limit.replace(",", "")), None))
        except ValueError:
            return None
    return Goal(tuple(parts)) if parts else None


def _met(runs: list[dict[str, Any]], name: str, value: float) -> str:
    rows = [row for run in runs for row in run.get("results", []) if row["benchmark"] == name]
    goal = _goal(rows[-1]) if rows else None
    if goal is not None and len(rows) > 1:
        return "ok" if goal.met(value) else "MISSED"
    marks = [{True: "ok", False: "MISSED", None: "-"}[row.get("met")] for row in rows]
    return marks[0] if len(set(marks)) == 1 else "/".join(marks)


def _describe(label: str, runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for run in runs:
        loads = run.get("load") or []
        load = f"{min(loads):.1f} .. {max(loads):.1f}" if loads else "?"
        lines.append(f"- {label}: {run.get('tree', '?')}, `{run.get('command', '?')}`,"
                     f" {run.get('started', '?')}, load average {load}")
    return lines


def table(before: list[dict[str, Any]], after: list[dict[str, Any]], every: bool = False
          ) -> str:
    lines = [*_describe("before", before), *_describe("after", after), "",
             "| case | goal | before | after | change | met (before → after) |",
             "|---|---|---:|---:|---:|---|"]
    missing = []
    names = list(dict.fromkeys(row["benchmark"] for run in after for row in run["results"]))
    for name in names:
        row = next(r for run in after for r in run["results"] if r["benchmark"] == name)
        if not every and row.get("goal", "-") == "-":
            continue
        was, now = _side(before, name), _side(after, name)
        if was is None or now is None:
            missing.append(name)
            continue
        goal = str(row["goal"]).split(" (")[0] if "OTel" in str(row["goal"]) else row["goal"]
        lines.append(f"| {name} | {goal} | {_shown(was)} | {_shown(now)} | {_change(was, now)}"
                     f" | {_met(before, name, was[0])} → {_met(after, name, now[0])} |")
    if missing:
        lines += ["", "Not measured before: " + "; ".join(missing) + "."]
    return "\n".join(lines).replace("<=", "≤").replace(">=", "≥") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, nargs="+", required=True)
    parser.add_argument("--after", type=Path, nargs="+", required=True)
    parser.add_argument("--all", action="store_true", help="every case, not only the goals")
    parser.add_argument("-o", "--out", type=Path, help="write here instead of printing")
    args = parser.parse_args()
    text = table([json.loads(p.read_text()) for p in args.before],
                 [json.loads(p.read_text()) for p in args.after], args.all)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
