"""Run every benchmark, print a table, write benchmarks/results.json and BENCHMARKS.md.

Machines here are noisy and small, so every overhead figure is a ratio against a baseline
measured in the same run, in alternating rounds, shown as the median with its spread (the
middle half of the rounds). Throughputs are absolute numbers, printed with the machine line.
A missed goal is profiled in the same run, and its cause written with it.

    python -m benchmarks               # everything (7-10 minutes on 2 cores)
    python -m benchmarks --quick       # fewer rounds and records, for a smoke run (~1 min)
    python -m benchmarks --only openai # one suite; its rows replace that suite's in results.json
    python -m benchmarks --markdown    # rewrite BENCHMARKS.md from the existing results.json

The peers (OpenTelemetry's openai-v2 instrumentation, LangChain, LiteLLM) come from the
``bench`` extra: ``pip install -e '.[dev,bench]'`` (``make bench`` does it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from . import core, peers, redis
from ._harness import (
    DOC,
    HERE,
    NOTES,
    RESULTS,
    header,
    load,
    machine,
    peer_versions,
    tree,
    write_markdown,
)

SUITES: dict[str, Callable[[bool], None]] = {
    "core": core.core,
    "pricing": core.pricing,
    "tenants": core.tenants,
    "openai": peers.openai_overhead,
    "langchain": peers.langchain_overhead,
    "litellm": peers.litellm_overhead,
    "redis": redis.redis,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--only", choices=list(SUITES))
    parser.add_argument("--markdown", action="store_true",
                        help="only rewrite BENCHMARKS.md from the results file")
    parser.add_argument("--results", type=Path, default=HERE / "results.json",
                        help="the results file (default: benchmarks/results.json)")
    parser.add_argument("--doc", type=Path, default=DOC,
                        help="the Markdown file written from it (default: BENCHMARKS.md)")
    args = parser.parse_args()
    out: Path = args.results
    if args.markdown:
        print(f"wrote {write_markdown(json.loads(out.read_text()), args.doc)}")
        return 0
    started, clock, measured = time.strftime("%Y-%m-%d %H:%M"), time.monotonic(), tree()
    print(f"machine: {machine()}")
    print(f"measuring: {measured}")
    print("peers: " + ", ".join(f"{k} {v}" for k, v in peer_versions().items()) + "\n")
    header()
    suites = [name for name in SUITES if args.only in (None, name)]
    rows: list[dict[str, object]] = []
    notes: list[dict[str, str]] = []
    loads = [load()]
    for name in suites:
        start, noted, began = len(RESULTS), len(NOTES), time.monotonic()
        SUITES[name](args.quick)
        rows += [{"suite": name, **row} for row in RESULTS[start:]]
        notes += [{"suite": name, "text": text} for text in NOTES[noted:]]
        loads.append(load())
        print(f"  ({name}: {time.monotonic() - began:.0f} s, load average {loads[-1]:.1f})",
              flush=True)
    command = "python -m benchmarks" + " --quick" * args.quick
    if args.only and out.exists():  # keep the other suites' rows of the last run
        previous = json.loads(out.read_text())
        kept = [row for row in previous.get("results", []) if row.get("suite") != args.only]
        order = list(SUITES)
        rows = sorted(kept + rows, key=lambda row: order.index(str(row.get("suite", "core"))))
        notes = [note for note in previous.get("notes", [])
                 if isinstance(note, dict) and note.get("suite") != args.only] + notes
        command = f"{previous.get('command', '?')}; --only {args.only}" + " --quick" * args.quick
    seconds = round(time.monotonic() - clock)
    document = {"machine": machine(), "tree": measured, "peers": peer_versions(),
                "quick": args.quick, "command": command, "started": started,
                "seconds": None if args.only else seconds,
                "load": [round(x, 2) for x in loads], "notes": notes, "results": rows}
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {out} and {write_markdown(document, args.doc)} in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
