"""The ``quota-hooks`` commands of the control plane: ``policy set|get|list|delete``,
``alerts`` and ``advise`` (registered by :func:`quota_hooks.cli.build_parser`)."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from .control import describe_policy, policy_json
from .errors import ConfigurationError
from .metrics import RATE_METRICS, budget_of
from .policy import QuotaPolicy, parse_policy, policy_key
from .windows import PERIODS

__all__ = ["add_commands"]

ManagerFactory = Callable[..., Any]

#: ``policy set`` flags: flag -> (policy field, how its value is read).
_RATES = tuple(m.name for m in RATE_METRICS)
#: ``--period`` -> the budget field ``--budget`` sets.
_BUDGET_FIELDS = {period: budget_of(period).name for period in PERIODS}
_FLAG_NAMES = {**{field: "--budget" for field in _BUDGET_FIELDS.values()},
               "warning_percent": "--warning",
               "critical_percent": "--critical", **{r: f"--{r}" for r in _RATES},
               "thresholds": "--thresholds", "timezone": "--timezone", "mode": "--mode"}


class _Bad(ConfigurationError):
    """A bad value of a flag (exit 2)."""


def _limit(flag: str, integer: bool) -> Callable[[str], int | Decimal | None]:
    def parse(text: str) -> int | Decimal | None:
        lowered = text.strip().lower()
        if lowered in ("none", "unlimited", "off"):
            return None
        try:
            value: int | Decimal = (int(lowered.replace("_", "")) if integer
                                    else Decimal(lowered))
        except (ValueError, InvalidOperation):
            kind = "a whole number" if integer else "an amount in USD"
            raise argparse.ArgumentTypeError(
                f"must be {kind} or 'none', got {text!r}") from None
        if (isinstance(value, Decimal) and not value.is_finite()) or value < 0:
            raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text!r}")
        return value

    parse.__name__ = flag
    return parse


def _thresholds(text: str) -> tuple[float, ...] | None:
    if text.strip().lower() in ("none", "default"):
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be percentages separated by commas (50,80,95,100), got {text!r}") from None


def _assignment(text: str) -> tuple[str, Any]:
    field, sep, raw = text.partition("=")
    if not sep or not field.strip():
        raise argparse.ArgumentTypeError(f"must be FIELD=VALUE (max_wait=5), got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # a plain string: a time zone, a mode
    return field.strip(), value


def add_commands(commands: Any, store_help: str, manager: ManagerFactory,
                 usage_error: type[Exception]) -> None:
    """Add ``policy``, ``alerts`` and ``advise`` to the ``quota-hooks`` parser."""
    policy = commands.add_parser(
        "policy", help="the policies every process sharing the store enforces")
    actions = policy.add_subparsers(dest="action", required=True)

    put = actions.add_parser(
        "set", help="set (or change) a stored policy: flags not given keep their value")
    put.add_argument("name", metavar="WORKSPACE",
                     help="a workspace id, a scope (team:ml, user:*) or * (the default)")
    for rate in _RATES:
        put.add_argument(f"--{rate}", type=_limit(f"--{rate}", True), metavar="N",
                         default=argparse.SUPPRESS, help="a whole number, or none")
    put.add_argument("--budget", metavar="USD", type=_limit("--budget", False),
                     default=argparse.SUPPRESS,
                     help="USD per budget period (--period, a month by default), or none")
    put.add_argument("--period", choices=list(_BUDGET_FIELDS), default="month",
                     help="the calendar period of --budget, in the policy's time zone: day, "
                          "week (ISO, from Monday) or month (the default); a policy may hold "
                          "one budget of each")
    put.add_argument("--mode", choices=["raise", "wait", "observe"], default=argparse.SUPPRESS,
                     help="what every limit does when a call does not fit")
    put.add_argument("--timezone", default=argparse.SUPPRESS,
                     help="IANA zone whose calendar bounds the budget (UTC)")
    put.add_argument("--warning", dest="warning_percent", type=float, metavar="PERCENT",
                     default=argparse.SUPPRESS, help="warning percentage (80)")
    put.add_argument("--critical", dest="critical_percent", type=float, metavar="PERCENT",
                     default=argparse.SUPPRESS, help="critical percentage (95)")
    put.add_argument("--thresholds", type=_thresholds, default=argparse.SUPPRESS,
                     metavar="P,P,...",
                     help="alert thresholds: 50,80,95,100 (each fires once per crossing)")
    put.add_argument("--set", dest="fields", type=_assignment, action="append", default=[],
                     metavar="FIELD=VALUE", help="any other policy field (max_wait=5)")
    put.add_argument("--store", help=store_help)
    put.set_defaults(run=lambda args: _set(args, manager, usage_error))

    get = actions.add_parser("get", help="one stored policy, and what applies")
    get.add_argument("name", metavar="WORKSPACE")
    get.add_argument("--json", action="store_true")
    get.add_argument("--store", help=store_help)
    get.set_defaults(run=lambda args: _get(args, manager, usage_error))

    listing = actions.add_parser("list", help="every stored policy")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--store", help=store_help)
    listing.set_defaults(run=lambda args: _list(args, manager, usage_error))

    delete = actions.add_parser("delete", help="delete a stored policy")
    delete.add_argument("name", metavar="WORKSPACE")
    delete.add_argument("--store", help=store_help)
    delete.set_defaults(run=lambda args: _delete(args, manager, usage_error))

    alerts = commands.add_parser(
        "alerts", help="a workspace's alert history (every process's, policy changes too)")
    alerts.add_argument("workspace", help="a workspace id; a scope (team:ml) or * shows its "
                        "policy changes and resets")
    alerts.add_argument("-n", type=int, default=20, help="how many, newest first (20)")
    alerts.add_argument("--json", action="store_true")
    alerts.add_argument("--store", help=store_help)
    alerts.set_defaults(run=lambda args: _alerts(args, manager, usage_error))

    reset = commands.add_parser(
        "reset", help="start a workspace's (or scope's) budget month again (kept in its "
                      "alert history)")
    reset.add_argument("name", metavar="WORKSPACE", help="a workspace id or a scope (team:ml)")
    reset.add_argument("--period", choices=list(_BUDGET_FIELDS), default="month",
                       help="which budget: this day's, week's or month's (the default)")
    reset.add_argument("--store", help=store_help)
    reset.set_defaults(run=lambda args: _reset(args, manager, usage_error))

    advice = commands.add_parser(
        "advise", help="this month's token mix of each model, repriced on cheaper models")
    advice.add_argument("workspace")
    advice.add_argument("--provider", help="the provider the models were called at (default: "
                        "what genai-prices finds by each model's name)")
    advice.add_argument("--top", type=int, default=5, help="alternatives shown per model (5)")
    advice.add_argument("--json", action="store_true")
    advice.add_argument("--store", help=store_help)
    advice.set_defaults(run=lambda args: _advise(args, manager, usage_error))


def _who(command: str) -> str:
    """Who made a change, for the alert history: the OS user and the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name (a container without /etc/passwd entry)
        return command
    return f"{user} ({command})"


def _key(name: str, usage_error: type[Exception]) -> str:
    try:
        return policy_key(name)
    except ConfigurationError as exc:
        raise usage_error(str(exc)) from None


def _stored(m: Any, usage_error: type[Exception]) -> Any:
    try:
        return m.stored_policies()
    except ConfigurationError as exc:
        raise usage_error(f"--store: {exc}") from None


def _set(args: argparse.Namespace, manager: ManagerFactory,
         usage_error: type[Exception]) -> int:
    key = _key(args.name, usage_error)
    changes = {field: getattr(args, field) for field in _FLAG_NAMES if hasattr(args, field)}
    if hasattr(args, "budget"):
        changes[_BUDGET_FIELDS[args.period]] = args.budget
    elif args.period != "month":
        raise usage_error(f"--period {args.period} sets the period of --budget: give --budget "
                          f"too (--budget 10 --period {args.period})")
    names = dict(_FLAG_NAMES)
    for field, value in args.fields:
        changes[field] = value
        names[field] = f"--set {field}"
    if not changes:
        raise usage_error("give at least one limit to set (--rpm 100, --budget 50, "
                          "--set max_wait=5 ...)")
    m = manager(args.store)
    try:
        try:
            version, policy = m.update_policy(key, changes, by=_who("quota-hooks policy set"),
                                              names=names)
        except ConfigurationError as exc:
            raise usage_error(str(exc)) from None
    finally:
        m.close()
    print(f"{key}: version {version}: {describe_policy(policy)}")
    print("every process sharing the store enforces it within a second")
    return 0


def _table(args: argparse.Namespace, manager: ManagerFactory,
           usage_error: type[Exception]) -> Any:
    """The store's policy table, read by a manager opened for it alone."""
    m = manager(args.store, existing=True)
    try:
        return _stored(m, usage_error)
    finally:
        m.close()


def _get(args: argparse.Namespace, manager: ManagerFactory,
         usage_error: type[Exception]) -> int:
    key = _key(args.name, usage_error)
    table = _table(args, manager, usage_error)
    found = table.policies.get(key)
    applies = key if found else ("*" if key.startswith("workspace:") and "*" in table.policies
                                 else None)
    if args.json:
        data: dict[str, Any] = {"key": key, "stored": found is not None,
                                "table_version": table.version}
        if found is not None:
            data.update(policy_json(key, found))
        data["applies"] = (policy_json(applies, table.policies[applies])["policy"]
                           if applies else None)
        data["applies_from"] = applies or "code"
        print(json.dumps(data, indent=2))
        return 0
    if found is not None:
        shown = policy_json(key, found)
        print(f"{key}: stored, version {found.version}, set {shown['updated_at']}")
        print(f"  {describe_policy(parse_policy(found.document))}")
    elif applies:
        print(f"{key}: no stored policy of its own; the store's default '*' applies "
              f"(version {table.policies['*'].version}):")
        print(f"  {describe_policy(parse_policy(table.policies['*'].document))}")
    else:
        print(f"{key}: no stored policy; each app enforces the policy in its code")
    return 0


def _list(args: argparse.Namespace, manager: ManagerFactory,
          usage_error: type[Exception]) -> int:
    table = _table(args, manager, usage_error)
    entries = [policy_json(key, table.policies[key]) for key in sorted(table.policies)]
    if args.json:
        print(json.dumps({"version": table.version, "policies": entries}, indent=2))
        return 0
    if not entries:
        print("no stored policy: each app enforces the policies in its code")
        return 0
    print(f"policy table version {table.version}")
    for entry in entries:
        policy = entry["policy"]
        described = ("not readable: " + "; ".join(entry["unreadable"]) if policy is None
                     else describe_policy(QuotaPolicy(**policy)))
        print(f"  {entry['key']:<24} v{entry['version']:<4} {entry['updated_at']}  "
              f"{described}")
    return 0


def _delete(args: argparse.Namespace, manager: ManagerFactory,
            usage_error: type[Exception]) -> int:
    key = _key(args.name, usage_error)
    m = manager(args.store, existing=True)
    try:
        table = _stored(m, usage_error)
        if key not in table.policies:
            stored = ", ".join(sorted(table.policies)) or "none"
            raise usage_error(f"{key} has no stored policy (stored: {stored})")
        version = m.put_policies({key: None}, by=_who("quota-hooks policy delete"))
    finally:
        m.close()
    print(f"{key}: deleted (version {version})")
    return 0


def _alerts(args: argparse.Namespace, manager: ManagerFactory,
            usage_error: type[Exception]) -> int:
    if args.n < 1:
        raise usage_error(f"-n must be at least 1, got {args.n}")
    key = _key(args.workspace, usage_error)
    m = manager(args.store, existing=True)
    try:
        kept = m.history_of(key, args.n)
    finally:
        m.close()
    if args.json:
        print(json.dumps([a.model_dump(mode="json") for a in kept], indent=2))
        return 0
    if not kept:
        print(f"workspace {args.workspace!r}: no alert kept")
        return 0
    for alert in kept:
        print(f"{alert.at.isoformat(timespec='seconds')}  {alert.kind.value:<15} "
              f"{alert.message}")
    return 0


def _advise(args: argparse.Namespace, manager: ManagerFactory,
            usage_error: type[Exception]) -> int:
    from .advice import format_advice

    if args.top < 1:
        raise usage_error(f"--top must be at least 1, got {args.top}")
    m = manager(args.store, existing=True)
    try:
        if args.workspace not in m.workspaces():
            raise usage_error(f"workspace {args.workspace!r} has no usage in {m.store!r}")
        advice = m.advise(args.workspace, provider=args.provider)
    finally:
        m.close()
    if args.json:
        print(json.dumps(advice.to_dict(), indent=2))
    else:
        print(f"workspace {args.workspace!r}, this budget month:")
        print(format_advice(advice, limit=args.top))
    return 0


def _reset(args: argparse.Namespace, manager: ManagerFactory,
           usage_error: type[Exception]) -> int:
    from .pricing import format_usd

    m = manager(args.store, existing=True)
    try:
        try:
            taken = m.reset_usage(args.name, by=_who("quota-hooks reset"),
                                  period=args.period)
        except ConfigurationError as exc:
            raise usage_error(str(exc)) from None
    finally:
        m.close()
    print(f"{_key(args.name, usage_error)}: budget {args.period} reset; {format_usd(taken)} "
          f"charged this {args.period} no longer counts against it (kept in its alert "
          "history)")
    return 0
