"""`PriceBook`: what a call costs, exactly, for every provider.

The prices are genai-prices' (pydantic's price data: every provider, ``Decimal``, tiers, cache
reads and writes, service tiers, batch, and the price in force on each date), with your own
overrides on top, which win: a dict (:meth:`PriceBook.with_overrides`), a JSON file, or the
``QUOTA_HOOKS_PRICES_FILE`` environment variable. Overrides are USD per 1M tokens (plus per
image, per audio minute and per 1M characters); quota-hooks ships a few (``data/
overrides.json``: the per-image prices genai-prices does not carry), as an example of the
format.

A record is priced by its provider and model (the same model name can cost differently at
another provider), at its own timestamp, in the service tier it was served (``service_tier``)
and as a batch call or not. The first call of a (provider, model, price) is resolved and
compiled into integer rates (:mod:`quota_hooks._rates`); every later one costs a few integer
multiplications. Costs are exact ``Decimal`` USD; running totals are integer nano-dollars
(:func:`to_nanos`). Floats never carry money. A model that cannot be priced is ``None``
(``priced=False``), never $0, with one warning per model; what a budget charges it is the
policy's ``unpriced`` setting.

Nothing here touches the network: genai-prices prices offline from the snapshot it ships,
or from one ``quota-hooks prices --update`` fetched when asked.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._fork import renew_after_fork
from ._genai import GenaiSource, SnapshotInfo
from ._rates import PICO_PER_USD, TOP_FIELDS, Rates, exact, pico_to_usd
from .errors import ConfigurationError
from .usage import MAX_NAME_LENGTH, UsageRecord, bounded

__all__ = [
    "NANOS_PER_USD",
    "PRICES_FILE_ENV",
    "SNAPSHOT_ENV",
    "Cost",
    "ModelPrice",
    "PriceBook",
    "SnapshotInfo",
    "estimate_cost",
    "format_usd",
    "from_nanos",
    "price_context",
    "to_nanos",
]

logger = logging.getLogger("quota_hooks")

NANOS_PER_USD = 1_000_000_000
_PER_MILLION = Decimal(1_000_000)
_NANO = Decimal("1e-9")
PRICES_FILE_ENV = "QUOTA_HOOKS_PRICES_FILE"
#: A genai-prices snapshot to price with instead of the bundled one (``prices --update``
#: writes one to :func:`updated_snapshot_path` and uses it from then on).
SNAPSHOT_ENV = "QUOTA_HOOKS_PRICES_SNAPSHOT"
_DATED_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_MAX_CACHED = 4096
#: The least fallback price (USD per 1M units): the dearest prices of the genai-prices
#: snapshot quota-hooks is tested with (o1-pro's $150 input and $600 output per 1M tokens,
#: and the dearest audio, per-minute and per-character prices). A book over genai-prices
#: never charges an unpriced model less, whatever snapshot it reads (an empty or cut-down
#: one included); a book of overrides only gets it for a kind of price it has none of.
FALLBACK_FLOOR: dict[str, Decimal] = {
    "input": Decimal(150),
    "cached_input": Decimal("37.5"),
    "cache_write": Decimal("37.5"),
    "output": Decimal(600),
    "audio_input": Decimal(40),
    "audio_output": Decimal(80),
    "per_minute": Decimal("0.08"),
    "per_1m_characters": Decimal(40),
}
#: The kinds of price a book of overrides only is given the floor for when it has none (the
#: others fall back to these in a price table: cached input to input, say).
_FLOORED_WHEN_MISSING = ("input", "output", "per_minute", "per_1m_characters")

_Price = Decimal | None


def to_nanos(usd: Decimal) -> int:
    """USD as a ``Decimal`` to integer nano-dollars (half-even rounding below a nano-dollar)."""
    return int((usd / _NANO).to_integral_value(rounding=ROUND_HALF_EVEN))


def pico_to_nanos(pico: int | Fraction) -> int:
    """Pico-dollars to nano-dollars, rounded half-even (integer arithmetic)."""
    if type(pico) is not int:
        return round(pico / 1000)  # a Fraction rounds half to even
    nanos, rest = divmod(pico, 1000)
    if rest > 500 or (rest == 500 and nanos & 1):
        return nanos + 1
    return nanos


def format_usd(amount: int | Decimal) -> str:
    """Dollars for people: cents always, sub-cent digits when they matter (to a micro-dollar):
    ``$12.50``, ``$0.0033``."""
    value = Decimal(amount).quantize(Decimal("0.000001")).normalize()
    exponent = value.as_tuple().exponent
    places = max(2, -exponent if isinstance(exponent, int) else 2)
    return f"${value:.{places}f}"


def from_nanos(nanos: int) -> Decimal:
    """Integer nano-dollars back to exact USD."""
    return Decimal(nanos).scaleb(-9)


_clock: list[Any] = [0, None]


def _now() -> datetime:
    """Now as an aware datetime, made once a second (the price in force changes by day)."""
    second = int(time.time())
    if _clock[0] != second:
        _clock[0], _clock[1] = second, datetime.fromtimestamp(second, UTC)
    moment: datetime = _clock[1]
    return moment


def updated_snapshot_path() -> Path:
    """Where ``quota-hooks prices --update`` keeps the snapshot it fetched:
    ``$QUOTA_HOOKS_PRICES_SNAPSHOT``, else ``$XDG_CACHE_HOME/quota-hooks/genai-prices.json``
    (``~/.cache`` when unset)."""
    explicit = os.environ.get(SNAPSHOT_ENV, "").strip()
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache) / "quota-hooks" / "genai-prices.json"


def price_context(record: UsageRecord) -> dict[str, str] | None:
    """genai-prices' price context of a record: the service tier it was served in
    (``{"service_tier": "flex"}``) and batch processing (``{"processing": "batch"}``)."""
    tier, batch = record.service_tier, record.batch
    if not tier and not batch:
        return None
    context = {}
    if tier:
        context["service_tier"] = tier.strip().lower()
    if batch:
        context["processing"] = "batch"
    return context


class ModelPrice(BaseModel):
    """The prices of one model, in an override. Token prices are USD per 1M tokens.

    ``cached_input``, ``cache_write`` and ``audio_input`` fall back to ``input`` when absent;
    ``audio_output`` falls back to ``output``. ``per_image`` is keyed ``"quality/size"``, e.g.
    ``"hd/1024x1792"``. ``fine_tuned`` holds the prices of fine-tunes of this model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: _Price = Field(default=None, ge=0)
    cached_input: _Price = Field(default=None, ge=0)
    cache_write: _Price = Field(default=None, ge=0)
    output: _Price = Field(default=None, ge=0)
    audio_input: _Price = Field(default=None, ge=0)
    audio_output: _Price = Field(default=None, ge=0)
    per_image: dict[str, Decimal] = Field(default_factory=dict)
    per_minute: _Price = Field(default=None, ge=0)
    per_1m_characters: _Price = Field(default=None, ge=0)
    fine_tuned: ModelPrice | None = None


class Cost(NamedTuple):
    """The price of one record: ``usd`` is ``None`` when the model could not be priced."""

    usd: Decimal | None
    source: str
    model: str | None = None
    """The price's key: ``"openai:gpt-4o"`` (genai-prices' provider and model) or an
    override's name."""
    pico: int | Fraction | None = None

    @property
    def priced(self) -> bool:
        """True when ``usd`` is a real price, not unknown."""
        return self.usd is not None

    @property
    def nanos(self) -> int | None:
        """``usd`` as integer nano-dollars."""
        if self.pico is not None:
            return pico_to_nanos(self.pico)
        return None if self.usd is None else to_nanos(self.usd)


_FREE = Cost(Decimal(0), "no billable usage", pico=0)


class PriceBook:
    """Model names to prices, and the exact cost of a :class:`UsageRecord`.

    ``PriceBook.default()`` is genai-prices with the overrides of ``QUOTA_HOOKS_PRICES_FILE``
    (what a :class:`~quota_hooks.QuotaManager` uses unless given ``prices=``).
    ``PriceBook(prices)`` is a book of ``prices`` only; ``PriceBook.default().with_overrides(
    prices)`` puts them on top of genai-prices.

    Override names resolve through, in order: the exact (lower-cased) name, ``aliases``, a
    provider prefix (``openai/``, ``azure/`` ...), a fine-tune (``ft:gpt-4o-mini:org::id``
    uses the base model's fine-tune prices, else its base prices) and a dated snapshot suffix
    (``gpt-4o-2024-08-06``, ``gpt-4-0613``). genai-prices resolves its own names (dated
    snapshots, fine-tunes, Bedrock regions, provider fallbacks: Azure serves OpenAI's models).

    Args:
        prices: override prices by model name.
        aliases: other names of those models.
        source: what ``price_source`` says for them.
        as_of: the date of the override prices.
        fallback: the price of models nobody prices (see :meth:`fallback_price`).
        genai: the genai-prices snapshot below the overrides; None for a book of overrides
            only.
    """

    def __init__(
        self,
        prices: Mapping[str, ModelPrice | Mapping[str, Any]] | None = None,
        *,
        aliases: Mapping[str, str] | None = None,
        source: str = "custom",
        as_of: str | None = None,
        fallback: ModelPrice | Mapping[str, Any] | None = None,
        genai: GenaiSource | None = None,
    ) -> None:
        self._prices: dict[str, ModelPrice] = {
            name.lower(): _parse_price(name, price, source)
            for name, price in (prices or {}).items()
        }
        self._aliases = {k.lower(): v.lower() for k, v in (aliases or {}).items()}
        self.source = source
        self.as_of = as_of
        self.genai = genai
        self._fallback = None if fallback is None else _parse_price("fallback", fallback, source)
        self._dearest: ModelPrice | None = None
        self._sources: dict[str, str] = {}
        self._resolved: dict[str, tuple[str, ModelPrice] | None] = {}
        self._table_rates: dict[str, Rates | None] = {}
        # The hot path: the rates of each (provider, model, context items), with the
        # genai-prices model whose price in force they are (``None``: a price that never
        # changes, an override's or a model's with no dated or timed prices), that price, and
        # the day they hold for when the model has variants a context selects (else None).
        self._fast: dict[tuple[str | None, str, tuple[tuple[str, str], ...]],
                         tuple[Rates, Any, Any, date | None]] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._failsafe_rates: Rates | None = None
        renew_after_fork(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork

    def __repr__(self) -> str:
        below = "" if self.genai is None else f" over {self.genai.label}"
        return f"PriceBook({len(self._prices)} override(s){below})"

    # ------------------------------------------------------------------ construction
    @classmethod
    def bundled(cls) -> PriceBook:
        """genai-prices (the snapshot it ships, or the one ``quota-hooks prices --update``
        fetched) under the few overrides quota-hooks ships (``data/overrides.json``)."""
        text = resources.files("quota_hooks").joinpath("data/overrides.json").read_text("utf-8")
        book = cls._from_document(json.loads(text), origin="quota-hooks overrides")
        snapshot = updated_snapshot_path()
        explicit = bool(os.environ.get(SNAPSHOT_ENV, "").strip())
        if explicit and not snapshot.exists():
            raise ConfigurationError(
                f"{SNAPSHOT_ENV}={str(snapshot)!r}: no such file (write one with "
                "'quota-hooks prices --update')")
        book.genai = GenaiSource(snapshot if snapshot.exists() else None)
        return book

    @classmethod
    def default(cls) -> PriceBook:
        """:meth:`bundled`, overridden by ``QUOTA_HOOKS_PRICES_FILE`` when it is set."""
        book = cls.bundled()
        path = os.environ.get(PRICES_FILE_ENV, "").strip()
        if path:
            book = book.with_overrides(cls.from_file(path, _env=True))
        return book

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, _env: bool = False) -> PriceBook:
        """A book of the overrides in a JSON file: ``{"models": {name: prices},
        "aliases": {...}}`` (a file with no ``models`` key is read as ``{name: prices}``)."""
        where = f"{PRICES_FILE_ENV}={os.fspath(path)!r}" if _env else f"price file {path!s}"
        try:
            document = json.loads(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"{where}: cannot be read ({exc.strerror})") from exc
        except ValueError as exc:
            raise ConfigurationError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise ConfigurationError(f"{where}: expected a JSON object")
        if "models" not in document:
            document = {"models": document}
        return cls._from_document(document, origin=where)

    @classmethod
    def from_litellm(cls) -> PriceBook:
        """A book of litellm's model map (``litellm.model_cost``), for who relies on litellm's
        own (or customised) prices. Requires the ``litellm`` extra; set
        ``LITELLM_LOCAL_MODEL_COST_MAP=True`` to keep ``import litellm`` off the network."""
        try:
            import litellm
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "PriceBook.from_litellm() needs litellm: pip install 'quota-hooks[litellm]'"
            ) from exc
        prices: dict[str, ModelPrice] = {}
        for name, entry in litellm.model_cost.items():
            if not isinstance(entry, dict) or name == "sample_spec":
                continue
            price = _price_from_litellm(entry)
            if price is not None:
                prices[name] = price
        return cls(prices, source="litellm")

    @classmethod
    def _from_document(cls, document: Mapping[str, Any], *, origin: str) -> PriceBook:
        models = document.get("models")
        if not isinstance(models, dict):
            raise ConfigurationError(f"{origin}: 'models' must be an object of model prices")
        aliases = document.get("aliases") or {}
        if not isinstance(aliases, dict):
            raise ConfigurationError(f"{origin}: 'aliases' must be an object")
        as_of = document.get("as_of")
        label = origin if as_of is None else f"{origin}:{as_of}"
        return cls(models, aliases=aliases, source=label, as_of=as_of)

    def with_overrides(
        self, overrides: PriceBook | Mapping[str, ModelPrice | Mapping[str, Any]]
    ) -> PriceBook:
        """A new book with ``overrides`` replacing or adding models (on top of the same
        genai-prices snapshot)."""
        if not isinstance(overrides, PriceBook):
            overrides = PriceBook(overrides, source="override")
        merged: dict[str, ModelPrice] = dict(self._prices)
        merged.update(overrides._prices)
        book = PriceBook(merged, aliases={**self._aliases, **overrides._aliases},
                         as_of=self.as_of, fallback=overrides._fallback or self._fallback,
                         genai=self.genai)
        book.source = self.source
        book._sources = {
            **dict.fromkeys(self._prices, self.source), **self._sources,
            **dict.fromkeys(overrides._prices, overrides.source), **overrides._sources,
        }
        return book

    def with_fallback(self, price: ModelPrice | Mapping[str, Any]) -> PriceBook:
        """A new book that charges models it cannot price at ``price`` (under a policy with
        ``unpriced="fallback"``), instead of the dearest prices it holds."""
        book = self.with_overrides({})
        book._fallback = _parse_price("fallback", price, "fallback")
        return book

    # ------------------------------------------------------------------ lookup
    def models(self) -> list[str]:
        """Every override model name, sorted (genai-prices' models: :meth:`info`)."""
        return sorted(self._prices)

    def provider_for_url(self, url: str) -> str | None:
        """The provider of an API base URL (genai-prices' id), or None when unknown."""
        return None if self.genai is None else self.genai.provider_for_url(url)

    def info(self) -> SnapshotInfo | None:
        """The genai-prices snapshot below the overrides (None for overrides only)."""
        return None if self.genai is None else self.genai.info()

    def resolve(self, model: str) -> tuple[str, ModelPrice] | None:
        """``(override key, prices)`` for ``model``, or ``None`` when no override prices it."""
        try:
            return self._resolved[model]
        except KeyError:
            pass
        found = self._lookup(model)
        if len(self._resolved) < _MAX_CACHED:
            self._resolved[model] = found
        return found

    def _lookup(self, model: str) -> tuple[str, ModelPrice] | None:
        name = model.strip().lower()
        fine_tuned = False
        if name.startswith("ft:"):
            parts = name.split(":")
            name, fine_tuned = (parts[1] if len(parts) > 1 else ""), True
        candidates = [name]
        if "/" in name:
            candidates.append(name.rsplit("/", 1)[1])
        for candidate in candidates:
            for key in (candidate, _DATED_SUFFIX.sub("", candidate)):
                key = self._aliases.get(key, key)
                price = self._prices.get(key)
                if price is None:
                    continue
                if fine_tuned:
                    if price.fine_tuned is not None:
                        return f"ft:{key}", price.fine_tuned
                    return f"ft:{key}(base prices)", price
                return key, price
        return None

    def source_of(self, key: str) -> str:
        """Where the prices of an override key came from."""
        base = key.removeprefix("ft:").split("(")[0]
        return self._sources.get(base, self.source)

    def rates(self, model: str, provider: str | None = None, *,
              when: datetime | None = None,
              context: Mapping[str, str] | None = None) -> Rates | None:
        """The compiled price of ``model`` at ``provider`` in force at ``when`` (now) under
        ``context``, or None when nothing prices it. Overrides win."""
        # The common case: one lookup (and the price in force, by identity). A response's
        # service tier ("default", on every OpenAI response) is a context: its rates are kept
        # too, for the day when the model has variants (a variant's dates go by day).
        items = tuple(sorted(context.items())) if context else ()
        fast = self._fast.get((provider, model, items))
        if fast is not None:
            rates, info, standard, day = fast
            if info is None and day is None:
                return rates
            moment = when or _now()
            if (info is None or info.get_prices(moment) is standard) and (
                    day is None or moment.date() == day):
                return rates
        return self._rates(model, provider, when, context)

    def _rates(self, model: str, provider: str | None, when: datetime | None,
               context: Mapping[str, str] | None) -> Rates | None:
        """:meth:`rates`, resolved and compiled (cached per name and price)."""
        if len(model) > MAX_NAME_LENGTH:  # a name from a request body: never cached whole
            model = bounded(model)
        if provider is not None and len(provider) > MAX_NAME_LENGTH:
            provider = bounded(provider)
        try:
            rates = self._table_rates[model]
        except KeyError:
            found = self.resolve(model)
            rates = None if found is None else _compile_table(found[1], found[0],
                                                              self.source_of(found[0]))
            if len(self._table_rates) >= _MAX_CACHED:
                self._table_rates.clear()
            self._table_rates[model] = rates
        if rates is not None or self.genai is None:
            if rates is not None:  # an override: one price, whatever the context
                self._remember(provider, model, context, rates, None, None, None)
            return rates
        moment = when or _now()
        try:
            resolved = self.genai.model(model, provider)
            if resolved is None:
                return self._failsafe() if self.genai.broken is not None else None
            rates = self.genai.rates(resolved, moment, context)
        except Exception as exc:
            # A price that genai-prices cannot work out must not make the call free (nor
            # break it): it is charged the fallback price.
            self._pricing_failed(model, provider, exc)
            return self._failsafe()
        from genai_prices.types import ModelPrice as GenaiPrice

        info = resolved[1]
        # A model with one price (not a list of dated or timed ones: genai-prices' own test
        # in get_prices) has it at any time; a context only matters through its variants.
        timed = not isinstance(info.prices, GenaiPrice)
        varied = bool(context) and bool(getattr(info, "price_variants", None))
        self._remember(provider, model, context, rates, info if timed else None,
                       info.get_prices(moment) if timed else None,
                       moment.date() if varied else None)
        return rates

    def _remember(self, provider: str | None, model: str, context: Mapping[str, str] | None,
                  rates: Rates, info: Any, standard: Any, day: date | None) -> None:
        """Keep ``rates`` for :meth:`rates`' one lookup (see ``_fast``)."""
        if len(self._fast) >= _MAX_CACHED:
            self._fast.clear()
        items = tuple(sorted(context.items())) if context else ()
        self._fast[(provider, model, items)] = (rates, info, standard, day)

    def _failsafe(self) -> Rates:
        """The fallback price as rates: for a model that genai-prices cannot price because
        of a fault (no snapshot could be loaded, a price it cannot work out), never $0."""
        rates = self._failsafe_rates
        if rates is None:
            why = "no genai-prices snapshot" if self.genai is not None and (
                self.genai.broken is not None) else "genai-prices failed"
            rates = _compile_table(self.fallback_price(), "fallback", f"fallback ({why})")
            self._failsafe_rates = rates
        return rates

    def _pricing_failed(self, model: str, provider: str | None, exc: BaseException) -> None:
        key = f"{provider}:{model}"
        if key in self._warned:
            return
        with self._lock:
            if len(self._warned) >= _MAX_CACHED:
                self._warned.clear()
            self._warned.add(key)
        logger.error(
            "quota-hooks: genai-prices failed pricing model %r of provider %r (%s: %s); it is "
            "charged the fallback price", model, provider, type(exc).__name__, exc)

    def price(self, model: str, provider: str | None = None) -> ModelPrice | None:
        """The prices of ``model`` per 1M tokens (at its base tier; see :meth:`explain`),
        or ``None`` if unknown."""
        found = self.resolve(model)
        if found is not None:
            return found[1]
        rates = self.rates(model, provider)
        return None if rates is None else _as_model_price(rates, 0)

    def explain(self, model: str, provider: str | None = None, *,
                when: datetime | None = None) -> list[str]:
        """How ``model`` is priced, for people: its key and source, and per tier its rates
        per 1M units; the service tiers and batch prices genai-prices lists for it."""
        rates = self.rates(model, provider, when=when)
        if rates is None:
            return [f"{model}: no price (unknown to the overrides and to genai-prices)"]
        lines = [f"{model}: priced as {rates.key}, from {rates.source}"]
        for level in range(len(rates.starts) + 1):
            label = "" if not rates.starts else (
                f"  input up to {rates.starts[0]:,} tokens:" if level == 0 else
                f"  input above {rates.starts[level - 1]:,} tokens (the whole request):")
            if label:
                lines.append(label)
            lines += [f"    {text}" for text in _rate_lines(rates, level)]
        if self.genai is not None and self.resolve(model) is None:
            try:
                found = self.genai.model(model, provider)
            except Exception:  # priced at the fallback (see rates): nothing more to say
                found = None
            variants = [] if found is None else (found[1].price_variants or [])
            for variant in variants:
                assert found is not None
                when_text = ", ".join(f"{k}={v}" for k, v in variant.when.items())
                try:
                    varied = self.genai.rates(found, when or datetime.now(UTC),
                                              dict(variant.when))
                except Exception:  # an odd variant must not break an explanation
                    continue
                shown = "; ".join(line for line in _rate_lines(varied, 0)
                                  if line.startswith(("input", "output")))
                lines.append(f"  with {when_text}: {shown}")
        return lines

    # ------------------------------------------------------------------ cost
    def cost(self, record: UsageRecord) -> Cost:
        """The exact USD cost of ``record``; ``usd is None`` when it cannot be priced."""
        if not (record.total_tokens or record.images or record.audio_seconds or record.characters):
            return _FREE
        context = price_context(record) if (record.service_tier or record.batch) else None
        rates = self.rates(record.model, record.provider, when=record.timestamp,
                           context=context)
        if rates is None:
            return self._unpriced(record.model, record.provider, "unknown model")
        pico = rates.pico(record)
        if pico is None:
            return self._unpriced(record.model, record.provider,
                                  f"no price for the units used ({rates.key})")
        return Cost(pico_to_usd(pico), rates.source, rates.key, pico)

    def estimate_cost(
        self, model: str, input_tokens: int, output_tokens: int = 0
    ) -> Decimal | None:
        """The USD cost of a call with these token counts, or ``None`` for an unknown model."""
        record = UsageRecord(model=model, input_tokens=input_tokens, output_tokens=output_tokens)
        return self.cost(record).usd

    def estimate_nanos(self, model: str, input_tokens: int, output_tokens: int,
                       provider: str | None = None) -> int | None:
        """Nano-dollars a call with these token counts costs at the model's text prices, for
        reservations (integer arithmetic on the compiled rates); ``None`` for a model that
        nothing prices (see :meth:`fallback_nanos`), 0 for a known model without token
        prices."""
        rates = self.rates(model, provider)
        if rates is None:
            return None
        pico = rates.tokens_pico(input_tokens, output_tokens)
        return 0 if pico is None else pico_to_nanos(pico)

    # ------------------------------------------------------------------ the unpriced
    def fallback_price(self) -> ModelPrice:
        """The price a call of a model nobody prices is charged at, under a policy with
        ``unpriced="fallback"``: the one given (:meth:`with_fallback`), else the dearest
        price of each kind in the book, overrides and genai-prices alike (input, cached
        input, cache write, output, audio, per image, per minute, per character), so that an
        unknown model can never cost less than a known one."""
        if self._fallback is not None:
            return self._fallback
        if self._dearest is None:
            prices = list(self._prices.values())
            if self.genai is not None:
                try:
                    prices += [ModelPrice(**found) for found in self.genai.current_prices()]
                except Exception as exc:  # an odd snapshot: the floor still holds
                    logger.warning("quota-hooks: the dearest genai-prices prices could not "
                                   "be read (%s: %s); the fallback price is the floor",
                                   type(exc).__name__, exc)
            self._dearest = _dearest(prices, floor=self.genai is not None)
        return self._dearest

    def fallback_cost(self, record: UsageRecord) -> Decimal:
        """What ``record`` is charged at :meth:`fallback_price` (an image at the dearest
        image price of any size; a unit that nothing in the book prices counts nothing)."""
        price = self.fallback_price()
        if record.images and price.per_image:
            key = f"{record.image_quality or 'standard'}/{record.image_size or '1024x1024'}"
            if key not in price.per_image:
                dearest = max(price.per_image.values())
                price = price.model_copy(update={"per_image": {**price.per_image, key: dearest}})
        rates = _compile_table(price, "fallback", "fallback")
        pico = rates.pico(record)
        if pico is None:  # some unit has no price at all: count the rest
            fields = {name: 0 for name in ("images", "characters") if name not in rates.priced}
            if "audio_seconds" not in rates.priced:
                fields["audio_seconds"] = 0.0  # type: ignore[assignment]
            pico = rates.pico(_replace(record, fields)) or 0
        return pico_to_usd(pico)

    def fallback_nanos(self, input_tokens: int, output_tokens: int) -> int:
        """:meth:`estimate_nanos` at the fallback price, for the reservation of a call whose
        model nothing prices."""
        price = self.fallback_price()
        total = input_tokens * (price.input or 0) + output_tokens * (price.output or 0)
        return to_nanos(Decimal(total) / _PER_MILLION)

    def _unpriced(self, model: str, provider: str, why: str) -> Cost:
        key = f"{provider}:{model}"
        if key not in self._warned:
            with self._lock:
                if key not in self._warned:
                    if len(self._warned) >= _MAX_CACHED:
                        self._warned.clear()
                    self._warned.add(key)
                    logger.warning(
                        "quota-hooks: cannot price model %r of provider %r (%s); its cost is "
                        "recorded as unknown, not $0, and a money budget charges it as the "
                        "policy's unpriced= says. Add it with PriceBook.with_overrides() or %s.",
                        model, provider, why, PRICES_FILE_ENV,
                    )
        return Cost(None, "unpriced")


_FIELDS_OF_TABLE = (
    ("input_tokens", "input", None),
    ("cached_input_tokens", "cached_input", "input"),
    ("cache_write_tokens", "cache_write", "input"),
    ("audio_input_tokens", "audio_input", "input"),
    ("output_tokens", "output", None),
    ("audio_output_tokens", "audio_output", "output"),
)


def _compile_table(price: ModelPrice, key: str, source: str) -> Rates:
    """An override's prices as :class:`Rates`: pico-dollars per token are its USD per 1M
    tokens times 10**6 (a part, like cached input, is priced as its difference from its
    parent, which it is counted in)."""
    coefficients: list[tuple[str, int | Fraction]] = []
    for name, attribute, parent in _FIELDS_OF_TABLE:
        value = getattr(price, attribute)
        if value is None:
            continue
        base = getattr(price, parent) if parent is not None else Decimal(0)
        if parent is not None and base is None:
            continue
        per = exact(Fraction(value - base) * 1_000_000)
        if per:
            coefficients.append((name, per))
    if price.per_1m_characters is not None:
        coefficients.append(("characters", exact(Fraction(price.per_1m_characters) * 10**6)))
    priced = {"input_tokens"} if price.input is not None else set()
    for unit, present in (("output_tokens", price.output is not None),
                          ("characters", price.per_1m_characters is not None),
                          ("audio_seconds", price.per_minute is not None),
                          ("images", bool(price.per_image))):
        if present:
            priced.add(unit)
    per_second = None if price.per_minute is None else (
        Fraction(price.per_minute) * PICO_PER_USD / 60)
    return Rates(key=key, source=source, starts=(), tables=(tuple(coefficients),),
                 constants=(0,), priced=frozenset(priced), per_second=per_second,
                 per_image=dict(price.per_image))


def _replace(record: UsageRecord, fields: Mapping[str, Any]) -> UsageRecord:
    from dataclasses import replace

    return replace(record, **fields)


def _as_model_price(rates: Rates, level: int) -> ModelPrice:
    """The per-1M prices of one tier level of compiled rates."""
    per = dict(rates.tables[level])

    def usd(value: int | Fraction) -> Decimal:
        return (pico_to_usd(value) * _PER_MILLION).normalize()

    fields: dict[str, Any] = {}
    inputs = per.get("input_tokens", 0) if "input_tokens" in rates.priced else None
    outputs = per.get("output_tokens", 0) if "output_tokens" in rates.priced else None
    if inputs is not None:
        fields["input"] = usd(inputs)
        for name, attribute in (("cached_input_tokens", "cached_input"),
                                ("cache_write_tokens", "cache_write"),
                                ("audio_input_tokens", "audio_input")):
            if name in per:
                fields[attribute] = usd(inputs + per[name])
    if outputs is not None:
        fields["output"] = usd(outputs)
        if "audio_output_tokens" in per:
            fields["audio_output"] = usd(outputs + per["audio_output_tokens"])
    if "characters" in per:
        fields["per_1m_characters"] = usd(per["characters"])
    if rates.per_second is not None:
        fields["per_minute"] = (pico_to_usd(rates.per_second * 60)).normalize()
    if rates.per_image:
        fields["per_image"] = dict(rates.per_image)
    return ModelPrice(**fields)


# What each coefficient is, for people, and the fields its price builds on (a part is
# counted in its parent, so its coefficient is its price's difference from the parent's).
_RATE_NAMES = (
    ("input_tokens", "input", ()),
    ("cached_input_tokens", "cache read", ("input_tokens",)),
    ("cache_write_tokens", "cache write", ("input_tokens",)),
    ("cache_write_1h_tokens", "cache write, 1 hour", ("input_tokens", "cache_write_tokens")),
    ("audio_input_tokens", "audio input", ("input_tokens",)),
    ("output_tokens", "output", ()),
    ("reasoning_tokens", "reasoning", ("output_tokens",)),
    ("audio_output_tokens", "audio output", ("output_tokens",)),
    ("characters", "characters", ()),
)


def _rate_lines(rates: Rates, level: int) -> list[str]:
    """One line per price of a tier level, in USD per 1M units (absolute prices)."""
    per = dict(rates.tables[level])
    lines = []
    for name, label, parents in _RATE_NAMES:
        if name in per or (not parents and name in rates.priced):
            total = per.get(name, 0) + sum(per.get(parent, 0) for parent in parents)
            lines.append(f"{label}: {format_usd(pico_to_usd(total) * _PER_MILLION)} per 1M")
    if rates.per_second is not None:
        lines.append(f"audio: {format_usd(pico_to_usd(rates.per_second * 60))} per minute")
    for key, usd in sorted(rates.per_image.items()):
        lines.append(f"image {key}: {format_usd(usd)}")
    if rates.constants[level]:
        lines.append(f"per request: {format_usd(pico_to_usd(rates.constants[level]))}")
    return lines


def _dearest(prices: Iterable[ModelPrice], *, floor: bool = True) -> ModelPrice:
    """The highest price of each kind among ``prices`` (fine-tunes included), never below
    :data:`FALLBACK_FLOOR` (``floor=False``: only for a kind that none of ``prices`` has), so
    that the fallback is never $0, even over an empty book."""
    every = list(prices)
    every += [p.fine_tuned for p in every if p.fine_tuned is not None]
    fields: dict[str, Any] = {}
    for name, least in FALLBACK_FLOOR.items():
        values = [v for p in every if (v := getattr(p, name)) is not None]
        if floor or (not values and name in _FLOORED_WHEN_MISSING):
            values.append(least)
        if values:
            fields[name] = max(values)
    images: dict[str, Decimal] = {}
    for p in every:
        for key, value in p.per_image.items():
            images[key] = max(value, images.get(key, value))
    if images:
        fields["per_image"] = images
    return ModelPrice(**fields)


def _parse_price(name: str, price: ModelPrice | Mapping[str, Any], origin: str) -> ModelPrice:
    if isinstance(price, ModelPrice):
        return price
    try:
        return ModelPrice.model_validate(price)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(
            f"{origin}: price of model {name!r}, field {field!r}={first.get('input')!r}: "
            f"{first['msg']}"
        ) from exc


def _price_from_litellm(entry: Mapping[str, Any]) -> ModelPrice | None:
    def per_million(key: str) -> Decimal | None:
        value = entry.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            return None
        return Decimal(repr(float(value))) * _PER_MILLION

    fields = {
        "input": per_million("input_cost_per_token"),
        "output": per_million("output_cost_per_token"),
        "cached_input": per_million("cache_read_input_token_cost"),
        "cache_write": per_million("cache_creation_input_token_cost"),
        "audio_input": per_million("input_cost_per_audio_token"),
        "audio_output": per_million("output_cost_per_audio_token"),
    }
    per_second = entry.get("input_cost_per_second")
    if isinstance(per_second, (int, float)) and per_second > 0:
        fields["per_minute"] = Decimal(repr(float(per_second))) * 60
    if all(v is None for v in fields.values()):
        return None
    return ModelPrice.model_validate({k: v for k, v in fields.items() if v is not None})


@functools.cache
def _default_book() -> PriceBook:
    return PriceBook.default()


def estimate_cost(
    model: str, tokens: int, output_tokens: int = 0, *, prices: PriceBook | None = None
) -> Decimal | None:
    """The seed guide's helper: the USD cost of ``tokens`` input (and ``output_tokens``) tokens.

    Uses the default prices unless ``prices`` is given; ``None`` for an unknown model.
    """
    return (prices or _default_book()).estimate_cost(model, tokens, output_tokens)


__all__ += ["TOP_FIELDS", "pico_to_nanos", "updated_snapshot_path"]
