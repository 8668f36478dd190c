"""The ``quota-hooks`` command: ``demo`` and ``prices``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .pricing import PriceBook

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .errors import ConfigurationError
    from .storage import store_from_url

    try:
        store = store_from_url(args.store)
    except ConfigurationError as exc:
        print(f"quota-hooks demo: --store: {exc}", file=sys.stderr)
        return 2
    run_demo(store=store)
    return 0


def _prices(args: argparse.Namespace) -> int:
    book = PriceBook.default()
    names = book.models()
    if args.model:
        found = book.resolve(args.model)
        if found is None:
            print(f"quota-hooks prices: unknown model {args.model!r}", file=sys.stderr)
            return 1
        names = [found[0]]
    print(f"prices: USD per 1M tokens (source {book.source})")
    print(f"{'model':<28}{'input':>10}{'cached':>10}{'output':>10}  other")
    for name in names:
        price = book.price(name)
        assert price is not None
        other = []
        if price.per_image:
            other.append("per image " + ", ".join(f"{k} ${v}" for k, v in price.per_image.items()))
        if price.per_minute is not None:
            other.append(f"${price.per_minute}/audio minute")
        if price.per_1m_characters is not None:
            other.append(f"${price.per_1m_characters}/1M characters")
        cells = [price.input, price.cached_input, price.output]
        shown = "".join(f"{'-' if v is None else v:>10}" for v in cells)
        print(f"{name:<28}{shown}  {'; '.join(other)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``quota-hooks`` command."""
    parser = argparse.ArgumentParser(prog="quota-hooks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="drive real clients offline through the adapters and print the report"
    )
    demo.add_argument(
        "--store", default="sqlite:///quota.db",
        help="where usage lives (default: sqlite:///quota.db, kept across runs; memory://)",
    )
    demo.set_defaults(run=_demo)
    prices = commands.add_parser("prices", help="show the price table and its source")
    prices.add_argument("model", nargs="?", help="one model (dated names and prefixes resolve)")
    prices.set_defaults(run=_prices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quota-hooks`` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
