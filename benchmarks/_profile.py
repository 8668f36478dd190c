"""Where a missed goal's time goes: cProfile over the quota-hooks variant of a case, reduced
to the quota-hooks code it ran.

The time counted is quota-hooks' own: the self time of every function in the ``quota_hooks``
package, plus what it calls outside the package, except calls that the baseline makes just as
often (an adapter's transport calls the inner transport, a stream wrapper iterates the inner
stream: that is the bare call's work, passed through). A function's share of a callee is
prorated by its share of that callee's calls' time (cProfile keeps one level of callers only).
The result is a short line: how long a call took under cProfile (and how much slower that is
than without it), how much of it is quota-hooks' own code, and that code's biggest pieces as
shares of it. cProfile slows code made of many small calls most, so shares matter more than
the absolute figures.
"""

from __future__ import annotations

import contextlib
import cProfile
import os
import pstats
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Func = tuple[str, int, str]


def _package_dir() -> str:
    import quota_hooks

    return os.path.dirname(os.path.abspath(quota_hooks.__file__)) + os.sep


@contextlib.contextmanager
def hooked(targets: Sequence[tuple[Any, str]], profiles: list[cProfile.Profile]
           ) -> Iterator[None]:
    """Profile every call of ``getattr(obj, name)`` for each target, in whatever thread runs
    it (a per-thread profiler enabled around the call): for callbacks that run on a library's
    thread pool or a store's writer thread. Restores the attributes on exit."""
    local = threading.local()
    lock = threading.Lock()
    saved = []

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def profiled(*args: Any, **kwargs: Any) -> Any:
            profile = getattr(local, "profile", None)
            if profile is None:
                profile = local.profile = cProfile.Profile()
                with lock:
                    profiles.append(profile)
            if getattr(local, "depth", 0):  # a nested target: its caller's profile is on
                return fn(*args, **kwargs)
            local.depth = 1
            profile.enable()
            try:
                return fn(*args, **kwargs)
            finally:
                profile.disable()
                local.depth = 0
        return profiled

    for obj, name in targets:
        had = name in vars(obj)
        saved.append((obj, name, had, vars(obj).get(name)))
        setattr(obj, name, wrap(getattr(obj, name)))
    try:
        yield
    finally:
        for obj, name, had, value in reversed(saved):
            if had:
                setattr(obj, name, value)
            else:
                delattr(obj, name)


def _stats(run: Callable[[], None] | None, calls: int,
           hooks: Sequence[tuple[Any, str]]) -> pstats.Stats | None:
    profiles: list[cProfile.Profile] = []
    with hooked(hooks, profiles):
        if run is not None and not hooks:
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.enable()
            try:
                for _ in range(calls):
                    run()
            finally:
                profile.disable()
        elif run is not None:
            for _ in range(calls):
                run()
    profiles = [p for p in profiles if p.getstats()]
    if not profiles:
        return None
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    return stats


def _label(func: Func, package: str) -> str:
    """A short name: ``memory.py:commit`` in the package, ``decoder.py:raw_decode``
    outside it, ``dict.get`` or ``json.dumps`` for a built-in."""
    filename, _, name = func
    if filename == "~":
        name = name.strip("<>")
        if name.startswith("method '") and name.endswith(" objects"):
            method, _, owner = name[len("method "):-len(" objects")].partition(" of ")
            return f"{owner.strip(chr(39))}.{method.strip(chr(39))}"
        return name.removeprefix("built-in method ").removeprefix("builtins.")
    return f"{os.path.basename(filename)}:{name}"


class Breakdown:
    """quota-hooks' own time in one profile, per function, as described in the module doc."""

    def __init__(self, stats: pstats.Stats, calls: int, base: pstats.Stats | None,
                 base_calls: int) -> None:
        self.package = _package_dir()
        self.calls = calls
        self.raw: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
        base_raw: dict[Func, Any] = base.stats if base is not None else {}  # type: ignore[attr-defined]
        self.children: dict[Func, dict[Func, tuple[int, int, float, float]]] = {}
        for func, (_, _, _, _, callers) in self.raw.items():
            for caller, edge in callers.items():
                self.children.setdefault(caller, {})[func] = edge
        # an outside function that the hooked variant calls no more often than the baseline
        self.passed = set()
        if base is not None:
            for func, (_, nc, _, _, _) in self.raw.items():
                if (not self.ours(func) and func in base_raw
                        and base_raw[func][1] / base_calls >= 0.95 * nc / calls):
                    self.passed.add(func)
        self._memo: dict[Func, float] = {}
        self._busy: set[Func] = set()

    def ours(self, func: Func) -> bool:
        return func[0].startswith(self.package)

    def own(self, func: Func) -> float:
        """Seconds of quota-hooks' own work inside ``func`` (a function of the package)."""
        if func in self._memo:
            return self._memo[func]
        if func in self._busy:  # recursion: count it once, at the outer call
            return 0.0
        self._busy.add(func)
        total = float(self.raw[func][2])
        for child, edge in self.children.get(func, {}).items():
            total += self.edge(child, edge)
        self._busy.discard(func)
        self._memo[func] = total
        return total

    def edge(self, child: Func, edge: tuple[int, int, float, float]) -> float:
        """quota-hooks' own seconds in one caller's calls of ``child``."""
        if self.ours(child):
            whole = self.raw[child][3]
            return edge[3] * (self.own(child) / whole if whole > 0 else 0.0)
        return 0.0 if child in self.passed else edge[3]

    def entries(self) -> list[tuple[Func, float]]:
        """Functions of the package entered from outside it, with their own seconds."""
        found = []
        for func, (_, _, _, ct, callers) in self.raw.items():
            if not self.ours(func):
                continue
            outside = [edge[3] for caller, edge in callers.items() if not self.ours(caller)]
            if not callers:
                outside = [ct]
            if outside and ct > 0:
                found.append((func, self.own(func) * sum(outside) / ct))
        return sorted(found, key=lambda item: -item[1])

    def pieces(self, func: Func) -> list[tuple[Func, float]]:
        """The direct callees of ``func`` with quota-hooks' seconds in them, and its self time."""
        found = [(child, self.edge(child, edge))
                 for child, edge in self.children.get(func, {}).items()]
        found.append((("self", 0, "self"), self.raw[func][2]))
        return sorted(found, key=lambda item: -item[1])


def describe(breakdown: Breakdown, top: int = 3, depth: int = 3, least: float = 0.05) -> str:
    """quota-hooks' own time a call, and a tree of where it goes: the entry points, then what
    each calls (its ``top`` biggest pieces, its own lines among them), ``depth`` levels deep,
    every piece as a share of the total, pieces under ``least`` of it left out. A function
    that is all one call of ours is shown with that call (``a > b``)."""
    entries = breakdown.entries()
    total = sum(seconds for _, seconds in entries)
    if total <= 0:
        return "no time in quota-hooks' own code"
    package = breakdown.package

    def render(func: Func, seconds: float, level: int, seen: tuple[Func, ...]) -> str:
        names = [_label(func, package)]
        own = breakdown.own(func) if breakdown.ours(func) else 0.0
        pieces = breakdown.pieces(func) if own > 0 else []
        while (pieces and pieces[0][0][0] != "self" and breakdown.ours(pieces[0][0])
               and pieces[0][1] >= 0.8 * own and pieces[0][0] not in seen):
            func = pieces[0][0]  # a wrapper: follow it down to where its time splits
            seen = (*seen, func)
            names.append(_label(func, package))
            own = breakdown.own(func)
            pieces = breakdown.pieces(func) if own > 0 else []
        text = f"{' > '.join(names)} {seconds / total:.0%}"
        if level >= depth or seconds < 3 * least * total:
            return text
        inner = []
        for child, part in pieces[:top]:
            share = seconds * part / own
            if share < least * total or child in seen:
                continue
            if child[0] == "self":
                inner.append(f"own lines {share / total:.0%}")
            else:
                inner.append(render(child, share, level + 1, (*seen, child)))
        return text + (f" ({', '.join(inner)})" if inner else "")

    shown = [render(func, seconds, 1, (func,)) for func, seconds in entries[:top]
             if seconds >= least * total]
    per_item = total / breakdown.calls * 1e6
    return f"{per_item:,.0f} µs in quota-hooks' own code: " + "; ".join(shown)


def cause(run: Callable[[], None], *, calls: int, base: Callable[[], None] | None = None,
          hooks: Sequence[tuple[Any, str]] = (), per: int = 1, unit: str = "call") -> str:
    """The line for one case: profile ``calls`` runs of ``run`` (and of ``base``, to tell
    pass-through calls apart), or only the ``hooks`` while ``run`` runs; ``per`` items a run
    (records of a block, say) make the figures per item. The same runs are timed without the
    profiler, to say how much it slowed them."""
    try:
        for fn in (base, run):
            for _ in range(max(1, calls // 10) if fn is not None else 0):
                fn()  # type: ignore[misc]
        start = time.perf_counter()
        for _ in range(calls):
            run()
        plain = time.perf_counter() - start
        start = time.perf_counter()
        stats = _stats(run, calls, hooks)
        profiled = time.perf_counter() - start
        base_stats = _stats(base, calls, ()) if base is not None else None
    except Exception as exc:  # a profile that fails never stops the benchmark
        return f"not profiled ({type(exc).__name__}: {exc})"
    if stats is None:
        return "not profiled (the profiler saw no call)"
    items = calls * per
    found = describe(Breakdown(stats, items, base_stats, items))
    if hooks:  # the hooks run on other threads too: no one wall-clock figure covers them
        return f"under cProfile, a {unit} spends (summed over threads) {found}"
    slow = f"{profiled / plain:.1f}x slow" if plain > 0 else "?"
    return (f"under cProfile ({slow}) a {unit} takes {profiled / items * 1e6:,.0f} µs, of"
            f" which {found}")


def memory_cause(fill: Callable[[int], Any], count: int, unit: str = "workspace",
                 top: int = 5) -> str:
    """Where the memory a ``fill(count)`` keeps is allocated: tracemalloc's blocks still held
    after it, each charged to the innermost quota-hooks line on its stack (the line of ours
    that made it), per ``unit``."""
    import gc
    import linecache
    import tracemalloc

    package = _package_dir()
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(25)
    try:
        before = tracemalloc.take_snapshot()
        kept = fill(count)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        if started:
            tracemalloc.stop()
    by_line: dict[tuple[str, int], int] = {}
    total = 0
    for diff in after.compare_to(before, "traceback"):
        if diff.size_diff <= 0:
            continue
        total += diff.size_diff
        frame = next((f for f in reversed(diff.traceback) if f.filename.startswith(package)),
                     None)  # the innermost line of ours
        key = (frame.filename, frame.lineno) if frame is not None else ("", 0)
        by_line[key] = by_line.get(key, 0) + diff.size_diff
    del kept
    if total <= 0:
        return "tracemalloc saw no memory kept"

    def name(key: tuple[str, int]) -> str:
        if not key[0]:
            return "outside quota-hooks"
        code = linecache.getline(key[0], key[1]).strip()
        code = code if len(code) <= 60 else code[:57] + "..."
        return f"{os.path.basename(key[0])}:{key[1]} `{code}`"

    ranked = sorted(by_line.items(), key=lambda item: -item[1])[:top]
    shown = ", ".join(f"{name(key)} {size / count / 1024:.2f} KB" for key, size in ranked)
    return (f"tracemalloc over {count:,} {unit}s: {total / count / 1024:.2f} KB kept a {unit},"
            f" allocated at {shown}")
