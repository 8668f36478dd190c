"""The ``quota-hooks`` command: ``demo``, ``serve``, ``status``, ``report``, ``prices``,
``reprice``, ``policy`` (``set``, ``get``, ``list``, ``delete``), ``alerts`` and ``advise``.

Exit codes: 0 done, 1 the store could not be read, 2 a bad flag or value (named in the
message), 130 interrupted (Ctrl-C), 141 the reader of the output went away (``| head``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any

from . import __version__
from .errors import ConfigurationError, StorageError
from .pricing import PriceBook

__all__ = ["build_parser", "main"]

DEFAULT_STORE = "sqlite:///quota.db"


class _UsageError(Exception):
    """A bad flag or value: exit code 2."""


def _manager(store_url: str | None, *, existing: bool = False) -> Any:
    """The manager of a command; ``existing``: a SQLite file must be there already (a
    read-only command never creates an empty store and reports it as normal)."""
    from ._config import STORE_ENV
    from .manager import QuotaManager
    from .storage import store_from_url

    url = store_url or os.environ.get(STORE_ENV, "").strip() or DEFAULT_STORE
    flag = "--store" if store_url else (STORE_ENV if os.environ.get(STORE_ENV) else "--store")
    if existing and url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].partition("?")[0]
        if path and not os.path.exists(path):
            raise _UsageError(f"{flag}: {path} does not exist (no usage was recorded there)")
    try:
        store = store_from_url(url)
    except ConfigurationError as exc:
        raise _UsageError(f"{flag}: {exc}") from exc
    try:
        # A command never seeds a store with the policies of the shell it runs in.
        return QuotaManager.from_env(store=store, seed_policies=False)
    except ConfigurationError as exc:
        store.close()
        raise _UsageError(str(exc)) from exc


# ---------------------------------------------------------------------- demo
def _store_url(store_url: str | None) -> tuple[str, str]:
    """The store URL of a command and the flag or variable it came from."""
    from ._config import STORE_ENV

    if store_url:
        return store_url, "--store"
    env = os.environ.get(STORE_ENV, "").strip()
    return (env, STORE_ENV) if env else (DEFAULT_STORE, "--store")


def _demo(args: argparse.Namespace) -> int:
    from .demo import WORKSPACE, enhanced_json, fresh_store, run_demo

    url, flag = _store_url(args.store)
    try:
        store, note = fresh_store(url)
    except ConfigurationError as exc:
        raise _UsageError(f"{flag}: {exc}") from exc
    # --json: stdout is the JSON alone; the traffic log goes to stderr.
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    server = None
    try:
        if args.serve:
            server = _start_server(args.port)
            say(f"dashboard: http://127.0.0.1:{server.port}/dashboard/{WORKSPACE}")
    except BaseException:
        store.close()
        raise
    view = (_LiveView.start(WORKSPACE) if out.isatty() and not args.plain and not args.json
            else None)

    def attach(manager: Any) -> None:
        if server is not None:
            server.serve(manager)
        if view is not None:
            view.watch(manager)

    (view.say if view is not None else say)(note)
    try:
        run = run_demo(
            say=view.say if view is not None else say,
            store=store,
            pace=args.pace if args.pace is not None else (0.4 if args.serve else 0.0),
            on_manager=attach,
            keep_open=True,
            summary=not args.json,
        )
    finally:
        if view is not None:
            view.stop()
    manager = run.manager
    try:
        if args.json:
            print(enhanced_json(manager))
        else:
            say("")
            say("next:")
            say("  quota-hooks demo --serve   # the same traffic, live on the dashboard "
                f"(http://127.0.0.1:{args.port}/dashboard/{WORKSPACE})")
            # report reads the same store by default unless --store chose another one.
            where = ("" if flag != "--store" or url in (DEFAULT_STORE, "memory://")
                     else f" --store {url}")
            kept = ("   # the usage just recorded, by model (--by method, --since 1h)"
                    if not url.startswith("memory://") else
                    "   # (memory:// keeps nothing: run the demo without --store to report)")
            say(f"  quota-hooks report{where}{kept}")
        if server is not None:
            say(f"serving the dashboard until Ctrl-C (or {args.hold:g} s)")
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(args.hold)
    finally:
        if server is not None:
            server.stop()
        manager.close()
    return 0


class _LiveView:
    """The demo's live terminal view (rich): the workspace's gauges above the traffic log."""

    def __init__(self, workspace: str, console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.workspace = workspace
        self.manager: Any = None
        self.console = console if console is not None else Console(markup=False,
                                                                   highlight=False)
        self.live = Live(self._render(), console=self.console, refresh_per_second=8)

    @classmethod
    def start(cls, workspace: str) -> _LiveView | None:
        try:
            view = cls(workspace)
        except ImportError:
            return None  # rich is optional: plain lines instead
        view.live.start()
        return view

    def watch(self, manager: Any) -> None:
        self.manager = manager

    def say(self, line: str) -> None:
        self.live.console.print(line, highlight=False, markup=False)
        self.live.update(self._render())

    def stop(self) -> None:
        self.live.update(self._render())
        self.live.stop()

    def _render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(f"workspace {self.workspace!r}"), expand=False)
        for column in ("limit", "used", "of", "%"):
            table.add_column(column, justify="right" if column != "limit" else "left")
        if self.manager is None:
            return table
        try:
            report = self.manager.status(self.workspace, enhanced=False)
        except Exception:  # the live view never stops the demo
            return table
        for metric, usage in report.limits.items():
            style = ("red" if usage.percentage >= 95 else
                     "yellow" if usage.percentage >= 80 else "green")
            # Text, never markup: nothing here is parsed for [tags], whatever the terminal.
            table.add_row(Text(metric), Text(f"{usage.current}"),
                          Text("-" if usage.limit is None else f"{usage.limit}"),
                          Text(f"{usage.percentage:.1f}", style=style))
        table.caption = Text(f"status: {report.status.value}")
        return table


class _Server:
    """The demo's dashboard: a :class:`~quota_hooks.server.background.BackgroundServer` for
    whichever manager :meth:`serve` is given."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.background: Any = None

    def serve(self, manager: Any) -> None:
        from .server import create_app
        from .server.background import BackgroundServer

        try:
            self.background = BackgroundServer(create_app(manager, tokens=""), port=self.port)
        except OSError as exc:
            raise _UsageError(f"--port {self.port}: {exc}") from exc

    def stop(self) -> None:
        if self.background is not None:
            self.background.stop()


def _check_port(host: str, port: int) -> None:
    """Fail early, naming ``--port``, when the port cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _UsageError(f"--port {port}: cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}") from exc


def _start_server(port: int) -> _Server:
    _check_port("127.0.0.1", port)
    try:
        import uvicorn  # noqa: F401

        from . import server  # noqa: F401
    except ImportError as exc:
        raise _UsageError(
            f"--serve needs the server extra: pip install 'quota-hooks[server]' ({exc})"
        ) from exc
    return _Server(port)


# ---------------------------------------------------------------------- serve
def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .server import ApiTokens, create_app
    except ImportError as exc:
        raise _UsageError(f"serve needs the server extra: pip install 'quota-hooks[server]' "
                          f"({exc})") from exc
    try:
        tokens = ApiTokens.from_env()
    except ConfigurationError as exc:
        raise _UsageError(str(exc)) from exc
    if tokens.open and not _loopback(args.host):
        raise _UsageError(
            f"--host {args.host}: without QUOTA_HOOKS_API_TOKENS the server would show every "
            f"workspace to anyone who can reach it; set tokens or serve on 127.0.0.1"
        )
    _check_port(args.host, args.port)
    manager = _manager(args.store)
    if tokens.open:
        print("no API tokens configured (QUOTA_HOOKS_API_TOKENS): listening on "
              f"{args.host} only, every workspace is visible there", flush=True)
    print(f"quota-hooks: {manager.store!r} on http://{args.host}:{args.port}/", flush=True)
    try:
        uvicorn.run(create_app(manager, tokens=tokens), host=args.host, port=args.port,
                    log_level="warning")
    finally:
        manager.close()
    return 0


# ---------------------------------------------------------------------- status
def _status(args: argparse.Namespace) -> int:
    manager = _manager(args.store, existing=True)
    try:
        known = manager.workspaces()
        if args.workspace not in known:
            # A typo, or a workspace that never made a call here: not "normal".
            shown = ", ".join(repr(w) for w in known[:10]) + (" ..." if len(known) > 10 else "")
            raise _UsageError(
                f"workspace {args.workspace!r} has no usage in {manager.store!r} "
                f"({'workspaces with usage: ' + shown if known else 'no workspace has usage'})")
        report = manager.status(args.workspace, enhanced=args.json)
        why = [] if args.json else _explain(manager, args.workspace, report)
    finally:
        manager.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"workspace {args.workspace!r}: {report.status.value} "
          f"(alert level {report.alert_level.value})")
    for metric, usage in report.limits.items():
        limit = "unlimited" if usage.limit is None else usage.limit
        print(f"  {metric:<20} {usage.current:>12} / {limit:<10} ({usage.percentage:.1f}%)")
    for line in why:
        print(f"  {line}")
    return 0


def _explain(manager: Any, workspace: str, report: Any) -> list[str]:
    from .demo import explain_status

    try:
        return explain_status(manager, workspace, report)
    except StorageError:
        return []


# ---------------------------------------------------------------------- report
_COLUMNS = ("name", "requests", "errors", "tokens", "input_tokens", "output_tokens", "cost_usd",
            "unpriced", "unpriced_charge_usd")
_MONEY = ("cost_usd", "unpriced_charge_usd")


def _fine(text: str, since: float, zone: str) -> bool:
    """True when ``--since`` asks for a finer start than a whole day: hours or minutes, or a
    time of day that is not midnight (in the policy's zone)."""
    from datetime import datetime

    from .windows import _zone

    value = text.strip()
    if value[-1:].lower() in ("h", "m") and value[:-1].isdigit():
        return True
    if value[-1:].lower() in ("d", "w") and value[:-1].isdigit():
        return False  # whole days, counted back from today
    local = datetime.fromtimestamp(since, _zone(zone))
    return (local.hour, local.minute, local.second, local.microsecond) != (0, 0, 0, 0)


def _records_since(path: Any, workspace: str | None,
                   since: float) -> list[tuple[str, Any, int | None, int | None, str | None]]:
    """Every record of a SQLite store's history since ``since``, with its workspace, what it
    was charged and its day (read-only, through its own connection)."""
    import sqlite3
    from pathlib import Path
    from urllib.parse import quote

    from .storage._rows import decode

    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    where = "s.scope = ?" if workspace is not None else (
        "s.scope >= 'workspace:' AND s.scope < 'workspace;'")
    params: tuple[Any, ...] = ((f"workspace:{workspace}", since) if workspace is not None
                               else (since,))
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            rows = conn.execute(
                "SELECT s.scope, h.record, h.charge_nanos, h.unpriced_nanos, h.day "
                f"FROM history_scopes s JOIN history h ON h.id = s.id WHERE {where} "
                "AND h.at >= ? ORDER BY h.id", params).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"reading the history of {str(path)!r} failed: {exc}") from exc
    return [(scope[len("workspace:"):], decode(text), charge, unpriced, day)
            for scope, text, charge, unpriced, day in rows]


def _report(args: argparse.Namespace) -> int:
    from .pricing import to_nanos
    from .status import iso
    from .windows import day_key, parse_since

    manager = _manager(args.store, existing=True)
    rows: dict[str, list[float]] = {}

    def add(key: str, values: Sequence[float]) -> None:
        row = rows.setdefault(key, [0, 0, 0, 0, 0, 0.0, 0, 0.0])
        for i, value in enumerate(values):
            row[i] += value

    try:
        now = manager.now()
        try:
            since = parse_since(args.since, now)
        except ValueError as exc:
            raise _UsageError(f"--since: {exc}") from exc
        if since > now:
            raise _UsageError(f"--since: {args.since!r} is in the future")
        path = getattr(manager.store, "path", None)
        if path is not None:
            # The store keeps every record: any start, to the second.
            header = f"usage since {args.since} ({iso(since)}, from each record), by {args.by}"
            for workspace, record, charge, unpriced, day in _records_since(
                    path, args.workspace, since):
                if charge is None:  # written before charges were kept: its cost
                    charge, unpriced = (0 if record.cost is None else to_nanos(record.cost)), 0
                unpriced = unpriced or 0
                if args.by == "workspace":
                    key = workspace
                elif args.by == "model":
                    key = record.model
                elif args.by == "method":
                    key = record.api_method
                else:  # the day it counted in (older rows: its own, in the policy's zone)
                    key = day or day_key(
                        record.timestamp.timestamp() if record.timestamp else since,
                        manager.policies.for_workspace(workspace).timezone)
                add(key, (1, 0 if record.success else 1, record.total_tokens,
                          record.input_tokens, record.output_tokens,
                          (charge - unpriced) / 1e9, int(record.cost is None), unpriced / 1e9))
        else:
            # Totals only: whole days (per day, per workspace) or whole budget months (per
            # model or method). A finer start is refused rather than silently rounded.
            zone = manager.policies.for_workspace(args.workspace or "").timezone
            if _fine(args.since, since, zone):
                raise _UsageError(
                    f"--since {args.since}: {manager.store!r} keeps totals per day and per "
                    "month, not each record, so it cannot start a report at an hour or "
                    "minute; give whole days (--since 1d, --since 2026-12-01), or use a "
                    "SQLite store, which keeps every record")
            by = {"method": "api_method", "workspace": "day"}.get(args.by, args.by)
            months: list[str] = []
            for workspace in [args.workspace] if args.workspace else manager.workspaces():
                history = manager.history(workspace, since=since, by=by)
                months = history.months
                for name, r in history.rows.items():
                    add(workspace if args.by == "workspace" else name,
                        (r.request_count, r.error_count, r.tokens_used, r.input_tokens,
                         r.output_tokens, r.cost_usd or 0.0, r.unpriced_count,
                         r.unpriced_charge_usd))
            if by in ("day",):
                header = (f"usage since {args.since} (whole days from {day_key(since, zone)}), "
                          f"by {args.by}")
            else:
                span = f"{months[0]} to {months[-1]}" if len(months) > 1 else (
                    months[0] if months else day_key(since, zone)[:7])
                header = (f"usage since {args.since}, by {args.by}: whole months {span} (the "
                          f"store keeps totals per {args.by} and month)")
    finally:
        manager.close()
    table = [
        {"name": name, **{c: (round(v, 6) if c in _MONEY else int(v))
                          for c, v in zip(_COLUMNS[1:], values, strict=True)}}
        for name, values in sorted(rows.items())
    ]
    if args.format == "json":
        print(json.dumps({"since": args.since, "by": args.by, "rows": table}, indent=2))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    else:
        print(header)
        print(f"{args.by:<28}{'requests':>10}{'errors':>8}{'tokens':>12}{'cost':>14}"
              f"{'unpriced':>10}")
        for line in table:
            print(f"{line['name']:<28}{line['requests']:>10}{line['errors']:>8}"
                  f"{line['tokens']:>12}{'$' + format(line['cost_usd'], '.6f'):>14}"
                  f"{line['unpriced']:>10}")
        if not table:
            print("(no usage in this range)")
    return 0


# ---------------------------------------------------------------------- prices
def _price_book() -> PriceBook:
    try:
        return PriceBook.default()
    except ConfigurationError as exc:
        raise _UsageError(str(exc)) from exc


def _prices(args: argparse.Namespace) -> int:
    if args.update:
        return _update_prices(args.url, args.to)
    book = _price_book()
    if args.model:
        rates = book.rates(args.model, args.provider)
        if rates is None:
            where = f" at provider {args.provider!r}" if args.provider else ""
            raise _UsageError(f"unknown model {args.model!r}{where}: neither the overrides nor "
                              "genai-prices price it (quota-hooks prices shows the sources)")
        for line in book.explain(args.model, args.provider):
            print(line)
        return 0
    info = book.info()
    if info is not None:
        print(f"prices: {info.source}")
        print(f"  genai-prices {info.version}: {info.providers} providers, {info.models} models")
        if info.fetched_at:
            print(f"  fetched {info.fetched_at} from {info.url}")
        else:
            print("  bundled snapshot (refresh: quota-hooks prices --update)")
    overrides = book.models()
    print(f"overrides ({book.source}): {len(overrides)} model(s), winning over genai-prices")
    for name in overrides:
        price = book.price(name)
        assert price is not None
        parts = [f"{label} ${value}" for label, value in (
            ("input", price.input), ("cached", price.cached_input), ("output", price.output))
            if value is not None]
        if price.per_image:
            parts.append("per image " + ", ".join(f"{k} ${v}" for k, v in
                                                  price.per_image.items()))
        print(f"  {name}: {'; '.join(parts)}")
    print("one model: quota-hooks prices MODEL [--provider P]")
    return 0


def _update_prices(url: str | None, to: str | None) -> int:
    """Fetch a genai-prices snapshot (only when asked) and keep it for the price book."""
    from datetime import datetime
    from pathlib import Path

    import httpx2
    from genai_prices import data_snapshot, types
    from genai_prices.update_prices import DEFAULT_UPDATE_URL

    from ._genai import check_snapshot
    from .pricing import updated_snapshot_path

    source = url or DEFAULT_UPDATE_URL
    target = Path(to) if to else updated_snapshot_path()
    try:
        response = httpx2.get(source, timeout=httpx2.Timeout(30, connect=10),
                              follow_redirects=True)
        response.raise_for_status()
        raw = response.json()
        providers = types._providers_from_raw(raw)
    except httpx2.HTTPError as exc:
        raise _UsageError(f"--url: fetching {source} failed: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise _UsageError(f"--url: {source} is not a genai-prices snapshot: {exc}") from exc
    try:
        # One that loads but cannot price would make every model unpriced: refused, and the
        # snapshot in use is left as it is.
        check_snapshot(data_snapshot.DataSnapshot(providers, from_auto_update=True))
    except ValueError as exc:
        raise _UsageError(f"--url: {source} was refused, {exc}; {target} is unchanged") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = {"url": source, "providers": len(providers),
            "models": sum(len(p.models) for p in providers),
            "fetched_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(raw), "utf-8")
    partial.replace(target)
    target.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2), "utf-8")
    print(f"prices: {meta['providers']} providers, {meta['models']} models from {source}")
    print(f"  written to {target}; the price book uses it from now on")
    if to and not os.environ.get("QUOTA_HOOKS_PRICES_SNAPSHOT"):
        print(f"  (set QUOTA_HOOKS_PRICES_SNAPSHOT={target} for quota-hooks to read it)")
    return 0


# ---------------------------------------------------------------------- reprice
def _reprice(args: argparse.Namespace) -> int:
    from .pricing import format_usd, from_nanos
    from .windows import parse_since

    manager = _manager(args.store, existing=True)
    try:
        try:
            since = parse_since(args.since, manager.now())
        except ValueError as exc:
            raise _UsageError(f"--since: {exc}") from exc
        try:
            report = manager.reprice(since, dry_run=args.dry_run)
        except ConfigurationError as exc:
            raise _UsageError(f"--store: {exc}") from exc
    finally:
        manager.close()
    verb = "would change" if args.dry_run else "changed"
    print(f"repriced {report.records} record(s) since {args.since} with today's prices "
          f"({manager.prices.info().source if manager.prices.info() else 'overrides'}); "
          f"{report.changed} {verb}")
    for month, (before, after) in sorted(report.months.items()):
        if before != after:
            print(f"  {month}: {format_usd(from_nanos(before))} -> "
                  f"{format_usd(from_nanos(after))} charged; the month's totals {verb} "
                  "accordingly")
    if not report.changed:
        print("  nothing to change: every record already costs what today's prices say")
    return 0


# ---------------------------------------------------------------------- parser
def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``quota-hooks`` command."""
    parser = argparse.ArgumentParser(prog="quota-hooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"quota-hooks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    store_help = f"store URL (default: $QUOTA_HOOKS_STORE, else {DEFAULT_STORE})"

    demo = commands.add_parser(
        "demo", help="drive real clients offline through the adapters and print the report"
    )
    demo.add_argument(
        "--store",
        help=f"where the demo's usage goes (default: $QUOTA_HOOKS_STORE, else {DEFAULT_STORE}); "
             "emptied at each run's start, refused if it holds any other workspace's usage",
    )
    demo.add_argument("--json", action="store_true",
                      help="print the seed's enhanced status JSON instead of the summary "
                           "(the traffic log goes to stderr)")
    demo.add_argument("--serve", action="store_true",
                      help="open the live dashboard on 127.0.0.1 while the demo runs")
    demo.add_argument("--port", type=_port, default=8765, help="dashboard port (8765)")
    demo.add_argument("--hold", type=_seconds, default=3600.0,
                      help="with --serve: seconds to keep serving after the traffic (3600)")
    demo.add_argument("--pace", type=_seconds, default=None,
                      help="seconds between calls (0; 0.4 with --serve, to watch them arrive)")
    demo.add_argument("--plain", action="store_true", help="plain lines, no live view")
    demo.set_defaults(run=_demo)

    serve = commands.add_parser("serve", help="serve the status API, WebSocket and dashboard")
    serve.add_argument("--store", help=store_help)
    serve.add_argument("--host", default="127.0.0.1", help="interface (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port (8000)")
    serve.set_defaults(run=_serve)

    status = commands.add_parser("status", help="one workspace's status")
    status.add_argument("workspace")
    status.add_argument("--json", action="store_true", help="the status JSON, enhanced")
    status.add_argument("--store", help=store_help)
    status.set_defaults(run=_status)

    report = commands.add_parser("report", help="usage over time, as a table, CSV or JSON")
    report.add_argument("--since", default="30d",
                        help="30d, 12h, 90m, 2w, 2026-01-05, 2026-01-05T10:00Z or epoch seconds "
                             "(30d); exact from each record with SQLite; with other stores "
                             "whole days (--by day) or months, and no hours or minutes")
    report.add_argument("--by", choices=["model", "method", "workspace", "day"],
                        default="model")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    report.add_argument("--workspace", help="one workspace (default: all)")
    report.add_argument("--store", help=store_help)
    report.set_defaults(run=_report)

    prices = commands.add_parser(
        "prices", help="where prices come from; how one model is priced; --update to refresh")
    prices.add_argument("model", nargs="?", help="one model (dated names and prefixes resolve)")
    prices.add_argument("--provider", help="the provider of MODEL (openai, anthropic, groq, "
                        "bedrock ...): the same name can cost differently elsewhere")
    prices.add_argument("--update", action="store_true",
                        help="fetch a newer genai-prices snapshot (only ever when asked)")
    prices.add_argument("--url", help="with --update: the snapshot's URL (an internal mirror); "
                        "default: genai-prices' own")
    prices.add_argument("--to", help="with --update: where to keep it (default: "
                        "$QUOTA_HOOKS_PRICES_SNAPSHOT, else ~/.cache/quota-hooks)")
    prices.set_defaults(run=_prices)

    reprice = commands.add_parser(
        "reprice", help="price stored usage again with today's prices (SQLite)")
    reprice.add_argument("--since", required=True,
                         help="30d, 12h, 2026-01-05 or epoch seconds: the records to reprice")
    reprice.add_argument("--dry-run", action="store_true", help="report, change nothing")
    reprice.add_argument("--store", help=store_help)
    reprice.set_defaults(run=_reprice)

    from ._cli_admin import add_commands

    add_commands(commands, store_help, _manager, _UsageError)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quota-hooks`` console script."""
    try:
        args = build_parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        try:
            return run(args)
        except _UsageError as exc:
            print(f"quota-hooks {args.command}: {exc}", file=sys.stderr)
            return 2
        except StorageError as exc:
            print(f"quota-hooks {args.command}: {exc}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        # Ctrl-C: a line, not a traceback (what was recorded is written out at exit).
        with contextlib.suppress(OSError, ValueError):
            print("quota-hooks: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`quota-hooks prices | head -2`): stop quietly. Point stdout at
        # /dev/null so that the interpreter's own flush at exit does not complain again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
